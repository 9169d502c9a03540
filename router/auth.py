"""Client authentication: who may log in, and how the proxy then logs in to servers.

Owns: reading a user's secret (config ``auth.users`` or ``auth_query`` on the primary),
the trust / md5 / SCRAM-SHA-256 dialogue with a client, and the ServerCredentials that
result (a plaintext password, an md5 hash, or SCRAM keys recovered from the client's
proof for pass-through).
Must not touch: sockets (the dialogue is driven through ``send``/``recv`` callables),
pools (``auth_query`` runs through a callable the proxy provides).

A wrong password and an unknown user fail identically: same SQLSTATE (28P01), same
message, and for SCRAM the same exchange up to the proof.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protocol import backend as be
from protocol import frontend as fe
from protocol.md5 import md5_verify
from protocol.scram import SCRAM_SHA_256, ScramError, ScramServer, ScramVerifier
from router.backends import ServerCredentials
from router.config import UserSettings
from router.errors import AuthenticationFailed, ClientProtocolViolation

_MD5_HASH = re.compile(r"^md5[0-9a-f]{32}$")

Send = Callable[[bytes], None]
Recv = Callable[[], Awaitable[tuple[str, bytes]]]


@dataclass(frozen=True, slots=True)
class UserSecret:
    """What the proxy knows of a user's password, in whichever form it was stored."""

    user: str
    password: str | None = None
    md5_hash: str | None = None
    verifier: ScramVerifier | None = None

    @classmethod
    def from_stored(cls, user: str, stored: str | None) -> UserSecret:
        """From a config entry or a ``pg_shadow.passwd`` value."""
        if stored is None:
            return cls(user)
        if ScramVerifier.is_verifier(stored):
            return cls(user, verifier=ScramVerifier.parse(stored))
        if _MD5_HASH.match(stored):
            return cls(user, md5_hash=stored)
        return cls(user, password=stored)

    @classmethod
    def from_settings(cls, user: str, entry: UserSettings) -> UserSecret:
        return cls.from_stored(user, entry.password)

    def server_credentials(
        self, scram_keys: tuple[bytes, bytes] | None = None
    ) -> ServerCredentials:
        return ServerCredentials(self.user, self.password, self.md5_hash, scram_keys)


async def authenticate(
    method: str, user: str, secret: UserSecret | None, send: Send, recv: Recv
) -> ServerCredentials:
    """Run the dialogue up to (not including) AuthenticationOk.

    ``secret`` is None for an unknown user, which always fails, after a full exchange.
    Returns the credentials for logging in to servers as this user.
    """
    if method == "trust":
        return (secret or UserSecret(user)).server_credentials()
    use_scram = method == "scram-sha-256"
    if secret is not None and secret.verifier is not None:
        use_scram = True  # as PostgreSQL: a SCRAM-stored password cannot do md5
    elif secret is not None and secret.md5_hash is not None:
        use_scram = False  # an md5 hash cannot answer SCRAM; md5 is the only way
    if use_scram:
        return await _scram(user, secret, send, recv)
    return await _md5(user, secret, send, recv)


async def _md5(user: str, secret: UserSecret | None, send: Send, recv: Recv) -> ServerCredentials:
    salt = secrets.token_bytes(4)
    send(be.AuthenticationMD5Password(salt).encode())
    response = fe.PasswordMessage.decode(await _expect_password(recv)).password
    stored = None if secret is None else (secret.password or secret.md5_hash)
    if secret is None or stored is None or not md5_verify(stored, user, salt, response):
        raise AuthenticationFailed(user)
    return secret.server_credentials()


async def _scram(user: str, secret: UserSecret | None, send: Send, recv: Recv) -> ServerCredentials:
    verifier = None
    if secret is not None:
        verifier = secret.verifier
        if verifier is None and secret.password is not None:
            verifier = ScramVerifier.from_password(secret.password)
    server = ScramServer(verifier, username=user)
    send(be.AuthenticationSASL((SCRAM_SHA_256,)).encode())
    initial = fe.SASLInitialResponse.decode(await _expect_password(recv))
    if initial.mechanism != SCRAM_SHA_256:
        raise ClientProtocolViolation(
            f"SASL mechanism {initial.mechanism!r} is not supported; use {SCRAM_SHA_256}"
        )
    try:
        send(
            be.AuthenticationSASLContinue(server.handle_client_first(initial.data or b"")).encode()
        )
        final = fe.SASLResponse.decode(await _expect_password(recv))
        server_final = server.handle_client_final(final.data)
    except ScramError as exc:
        raise AuthenticationFailed(user) from exc
    if secret is None or verifier is None:  # unreachable: a fake exchange fails at the proof
        raise AuthenticationFailed(user)
    send(be.AuthenticationSASLFinal(server_final).encode())
    return secret.server_credentials((server.client_key, verifier.server_key))


async def _expect_password(recv: Recv) -> bytes:
    tag, body = await recv()
    if tag != "p":
        raise ClientProtocolViolation(
            f"expected a password message during authentication, got message type {tag!r}"
        )
    return body
