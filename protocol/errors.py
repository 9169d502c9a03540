"""Errors raised by the sans-IO protocol layer.

Owns: the exceptions the codec raises when bytes do not form valid messages.
Must not touch: sockets, asyncio, SQLSTATE policy of the proxy (router/errors.py maps these).
"""


class ProtocolError(Exception):
    """Bytes that do not form a valid PostgreSQL v3 message (SQLSTATE 08P01)."""


class MessageTooLarge(ProtocolError):
    """A message whose declared length is over the configured limit."""

    def __init__(self, tag: str, size: int, limit: int) -> None:
        super().__init__(f"message {tag!r} of {size} bytes is over the limit of {limit} bytes")
        self.tag = tag
        self.size = size
        self.limit = limit
