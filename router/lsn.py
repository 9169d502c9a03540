"""Log sequence numbers: PostgreSQL's ``X/Y`` text form and the integers behind it.

Owns: parsing and formatting LSNs. Must not touch anything else.
"""

from __future__ import annotations

import re
from typing import Final

_LSN: Final = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")


class InvalidLsn(ValueError):
    pass


def parse_lsn(text: str) -> int:
    """``'0/3000060'`` -> 50331744; raises InvalidLsn with a message naming the input."""
    match = _LSN.match(text)
    if not match:
        raise InvalidLsn(f"invalid LSN {text!r}: expected two hexadecimal numbers like '0/3000060'")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
