"""Inbox: decoded messages waiting for the coroutine that drives a handshake.

Owns: handing frames from ``data_received`` callbacks to a coroutine that awaits them one
at a time (client login, server login, the proxy's own queries), and waking that
coroutine when the connection closes.
Must not touch: what the messages mean.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

Frame = tuple[str, bytes]


class Inbox:
    __slots__ = ("_closed", "_items", "_wakeup")

    def __init__(self) -> None:
        self._items: deque[Frame] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False

    def push(self, items: Iterable[Frame]) -> None:
        self._items.extend(items)
        self._wake()

    def close(self) -> None:
        """No more messages will come: a waiting ``get`` raises."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def get(self, closed: Callable[[], BaseException]) -> Frame:
        """The next message; raises ``closed()`` once the connection has closed."""
        while not self._items:
            if self._closed:
                raise closed()
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        return self._items.popleft()

    def drain(self) -> list[Frame]:
        items = list(self._items)
        self._items.clear()
        return items
