"""MD5 password authentication (AuthenticationMD5Password), as PostgreSQL does it.

Owns: the pg_authid "md5..." hash, the salted response a client sends, and checking one.
Must not touch: sockets, where passwords are stored, SCRAM (scram.py).

The stored form is ``"md5" + md5(password + user)``; the response to a 4-byte salt is
``"md5" + md5(hex_of_stored_hash + salt)``. Strings are UTF-8 (surrogateescape) bytes.
"""

from __future__ import annotations

import hashlib
import hmac

from protocol.scram import ScramVerifier

_HEX = frozenset("0123456789abcdef")


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def is_md5_hash(text: str) -> bool:
    """True for a stored "md5" + 32 lowercase hex digits, as PostgreSQL recognizes it."""
    return len(text) == 35 and text.startswith("md5") and set(text[3:]) <= _HEX


def md5_password_hash(user: str, password: str) -> str:
    """The pg_authid form of ``password`` for ``user``."""
    return "md5" + _md5_hex(_bytes(password) + _bytes(user))


def md5_response(user: str, password_or_hash: str, salt: bytes) -> str:
    """What the client sends for ``salt``, from a plaintext password or a stored md5 hash."""
    if len(salt) != 4:
        raise ValueError(f"MD5 salt must be 4 bytes, not {len(salt)}")
    if is_md5_hash(password_or_hash):
        stored = password_or_hash
    else:
        stored = md5_password_hash(user, password_or_hash)
    return "md5" + _md5_hex(stored[3:].encode("ascii") + salt)


def md5_verify(stored: str, user: str, salt: bytes, response: str) -> bool:
    """Check a client's response against a stored plaintext password or md5 hash.

    A SCRAM verifier cannot check an MD5 response, so it never matches (PostgreSQL switches
    such users to SCRAM instead; so should the caller).
    """
    if ScramVerifier.is_verifier(stored):
        return False
    expected = md5_response(user, stored, salt)
    return hmac.compare_digest(_bytes(expected), _bytes(response))
