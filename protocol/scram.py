"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) the way PostgreSQL speaks it, both sides.

Owns: the SCRAM verifier format stored in pg_authid, the server side that authenticates a
connecting client (``ScramServer``), and the client side the proxy uses to log in to a
PostgreSQL server (``ScramClient``), with a password or with a ClientKey recovered from the
client's own exchange (pass-through, as PgBouncer does).
Must not touch: sockets, message framing (the caller wraps these payloads in
SASLInitialResponse / SASLResponse / AuthenticationSASLContinue / AuthenticationSASLFinal),
where verifiers come from.

Theory of operation (names from RFC 5802)::

    SaltedPassword  = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)
    ClientKey       = HMAC(SaltedPassword, "Client Key");  StoredKey = H(ClientKey)
    ServerKey       = HMAC(SaltedPassword, "Server Key")
    AuthMessage     = client-first-bare + "," + server-first + "," + client-final-without-proof
    ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
    ServerSignature = HMAC(ServerKey, AuthMessage)

The server knows only StoredKey and ServerKey; from a valid proof it recovers ClientKey
(proof XOR HMAC(StoredKey, AuthMessage), checked by H(ClientKey) == StoredKey), which is
enough to compute a proof for any other server holding the same verifier.

As in PostgreSQL: the user name in client-first-message is ignored (libpq sends "n=,"; the
user comes from the startup packet), channel binding is not offered (gs2 flags "n" and "y"
are accepted, "p" refused), and an unknown user gets a complete exchange with a fake but
stable salt, failing only at the proof, so the reply does not reveal that it is unknown.

SASLprep (RFC 4013) is applied to passwords like PostgreSQL's pg_saslprep: pure-ASCII
passwords are used as they are; otherwise map non-ASCII spaces to U+0020, drop characters
"commonly mapped to nothing", normalize to NFKC (Unicode 3.2 tables), then reject
prohibited or unassigned characters and bad bidirectional text. When any of that fails (or
the string is not valid UTF-8), the raw UTF-8 bytes are used, as PostgreSQL does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Self

SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
DEFAULT_SALT_LEN = 16
_NONCE_RAW_LEN = 18  # as PostgreSQL and libpq
_KEY_LEN = 32
# Seeds the fake salts of unknown users: stable for the life of the process, like
# PostgreSQL's mock_auth_nonce is for the life of the cluster.
_MOCK_SECRET = secrets.token_bytes(32)


class ScramError(Exception):
    """A SCRAM exchange that failed: malformed message, wrong nonce or proof, server error."""


# --- primitives ----------------------------------------------------------------------


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError(f"malformed SCRAM message: invalid base64 in {what}") from None


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(_NONCE_RAW_LEN))


def _check_nonce(nonce: str) -> str:
    # printable = %x21-2B / %x2D-7E (any printable ASCII except ",")
    if not nonce or any(not ("!" <= c <= "~") or c == "," for c in nonce):
        raise ScramError("malformed SCRAM message: invalid nonce")
    return nonce


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("malformed SCRAM message: not valid UTF-8") from None


def _attr(part: str, name: str) -> str:
    if not part.startswith(name + "="):
        raise ScramError(f"malformed SCRAM message: expected attribute {name!r}")
    return part[len(name) + 1 :]


def _saslprep_strict(text: str) -> str | None:
    if any("\ud800" <= c <= "\udfff" for c in text):
        return None  # carries undecodable bytes (surrogateescape): not valid UTF-8
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    if not mapped:
        return None
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for c in normalized:
        if (
            stringprep.in_table_a1(c)
            or stringprep.in_table_c12(c)
            or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c)
            or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c)
            or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c)
            or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c)
        ):
            return None
    if any(stringprep.in_table_d1(c) for c in normalized):
        if any(stringprep.in_table_d2(c) for c in normalized):
            return None
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return None
    return normalized


def saslprep(password: str) -> bytes:
    """The bytes PostgreSQL feeds to PBKDF2 for ``password`` (see the module docstring)."""
    raw = password.encode("utf-8", "surrogateescape")
    if password.isascii():
        return raw
    prepared = _saslprep_strict(password)
    return raw if prepared is None else prepared.encode("utf-8")


def _salted_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for a password."""
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


# --- verifier --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScramVerifier:
    """A stored SCRAM secret: ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse the pg_authid text form; ``ValueError`` when it is not one."""
        try:
            method, iter_salt, keys = text.split("$")
            iterations_text, salt_b64 = iter_salt.split(":")
            stored_b64, server_b64 = keys.split(":")
        except ValueError:
            raise ValueError("not a SCRAM-SHA-256 verifier") from None
        if method != SCRAM_SHA_256:
            raise ValueError(f"unsupported SCRAM method {method!r}")
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise ValueError(f"invalid SCRAM iteration count {iterations_text!r}")
        iterations = int(iterations_text)
        if iterations < 1:
            raise ValueError("SCRAM iteration count must be positive")
        try:
            salt, stored_key, server_key = (
                base64.b64decode(part.encode("ascii"), validate=True)
                for part in (salt_b64, stored_b64, server_b64)
            )
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("invalid base64 in SCRAM verifier") from None
        if not salt:
            raise ValueError("empty salt in SCRAM verifier")
        if len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
            raise ValueError("SCRAM keys must be 32 bytes")
        return cls(iterations, salt, stored_key, server_key)

    @classmethod
    def from_password(
        cls, password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
    ) -> Self:
        if iterations < 1:
            raise ValueError("SCRAM iteration count must be positive")
        if salt is None:
            salt = secrets.token_bytes(DEFAULT_SALT_LEN)
        client_key, server_key = _salted_keys(password, salt, iterations)
        return cls(iterations, salt, _h(client_key), server_key)

    @staticmethod
    def is_verifier(text: str) -> bool:
        try:
            ScramVerifier.parse(text)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return (
            f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    def __repr__(self) -> str:  # keys are secrets: keep them out of logs
        return f"ScramVerifier(iterations={self.iterations}, salt={_b64(self.salt)!r}, ...)"


def _mock_verifier(username: str) -> ScramVerifier:
    seed = _MOCK_SECRET + username.encode("utf-8", "surrogateescape")
    salt = _h(seed)[:DEFAULT_SALT_LEN]
    return ScramVerifier(DEFAULT_ITERATIONS, salt, _h(b"stored" + seed), _h(b"server" + seed))


# --- server side ---------------------------------------------------------------------


class ScramServer:
    """Authenticates a connecting client against a verifier (``None``: unknown user).

    ``username`` only seeds the fake salt for an unknown user, so that repeated attempts
    for the same name see the same salt, as they would for a real user.
    After ``handle_client_final`` succeeds, ``client_key`` and ``server_key`` hold what a
    ``ScramClient`` needs to log in to servers on the client's behalf.
    """

    def __init__(
        self, verifier: ScramVerifier | None, *, nonce: str | None = None, username: str = ""
    ) -> None:
        self._mock = verifier is None
        self._verifier = _mock_verifier(username) if verifier is None else verifier
        self._server_nonce = _check_nonce(nonce) if nonce is not None else _new_nonce()
        self._state = "client-first"
        self._gs2_header = ""
        self._nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._client_key: bytes | None = None

    @property
    def authenticated(self) -> bool:
        return self._state == "done"

    @property
    def client_key(self) -> bytes:
        """The client's ClientKey, recovered from its proof; only after success."""
        if self._client_key is None:
            raise ScramError("SCRAM exchange has not succeeded: no ClientKey")
        return self._client_key

    @property
    def server_key(self) -> bytes:
        """The verifier's ServerKey, to check servers' signatures; only after success."""
        if self._client_key is None:
            raise ScramError("SCRAM exchange has not succeeded: no ServerKey")
        return self._verifier.server_key

    def _expect(self, state: str) -> None:
        if self._state != state:
            raise ScramError(f"unexpected SCRAM message in state {self._state!r}")

    def handle_client_first(self, data: bytes) -> bytes:
        """client-first-message -> server-first-message."""
        self._expect("client-first")
        self._state = "failed"
        text = _decode(data)
        flag = text[:1]
        if flag == "p":
            raise ScramError(
                "client requires SCRAM channel binding, which this server does not offer"
            )
        if flag not in ("n", "y") or text[1:2] != ",":
            raise ScramError("malformed SCRAM message: unexpected channel-binding flag")
        if text[2:4] == "a=":
            raise ScramError("client uses authorization identity, but it is not supported")
        if text[2:3] != ",":
            raise ScramError("malformed SCRAM message: expected end of gs2 header")
        self._gs2_header = text[:3]
        bare = text[3:]
        if bare.startswith("m="):
            raise ScramError("client requires an unsupported SCRAM extension")
        parts = bare.split(",")
        if len(parts) < 2:
            raise ScramError("malformed SCRAM message: expected attribute 'r'")
        _attr(parts[0], "n")  # ignored: the user comes from the startup packet
        client_nonce = _check_nonce(_attr(parts[1], "r"))
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        self._state = "client-final"
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """client-final-message -> server-final-message; ``ScramError`` if it does not verify."""
        self._expect("client-final")
        self._state = "failed"
        text = _decode(data)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM message: expected attribute 'p'")
        parts = without_proof.split(",")
        if len(parts) < 2:
            raise ScramError("malformed SCRAM message: expected attribute 'r'")
        binding = _unb64(_attr(parts[0], "c"), "channel binding")
        if binding != self._gs2_header.encode("ascii"):
            raise ScramError("unexpected SCRAM channel-binding attribute in client-final-message")
        if not hmac.compare_digest(_attr(parts[1], "r").encode(), self._nonce.encode()):
            raise ScramError("SCRAM nonce does not match")
        proof = _unb64(proof_b64, "proof")
        if len(proof) != _KEY_LEN:
            raise ScramError("malformed SCRAM message: proof has the wrong length")
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message.encode()))
        if not hmac.compare_digest(_h(client_key), v.stored_key) or self._mock:
            raise ScramError("password authentication failed")
        self._client_key = client_key
        self._state = "done"
        signature = _hmac(v.server_key, auth_message.encode())
        return f"v={_b64(signature)}".encode("ascii")


# --- client side ---------------------------------------------------------------------


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    """Logs in to a server with a password, or with a ClientKey + ServerKey pair.

    ``username`` defaults to "" like libpq (PostgreSQL uses the startup packet's user).
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        nonce: str | None = None,
        username: str = "",
    ) -> None:
        has_keys = client_key is not None and server_key is not None
        if (password is None) == (not has_keys) or (client_key is None) != (server_key is None):
            raise ValueError("give either a password or both client_key and server_key")
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._nonce = _check_nonce(nonce) if nonce is not None else _new_nonce()
        self._client_first_bare = f"n={_escape_saslname(username)},r={self._nonce}"
        self._expected_signature = b""
        self._state = "start"

    def _expect(self, state: str) -> None:
        if self._state != state:
            raise ScramError(f"unexpected SCRAM step in state {self._state!r}")

    def client_first(self) -> bytes:
        self._expect("start")
        self._state = "server-first"
        return f"n,,{self._client_first_bare}".encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """server-first-message -> client-final-message."""
        self._expect("server-first")
        self._state = "failed"
        text = _decode(data)
        if text.startswith("m="):
            raise ScramError("server requires an unsupported SCRAM extension")
        parts = text.split(",")
        if len(parts) < 3:
            raise ScramError("malformed SCRAM message: expected attributes r, s, i")
        nonce = _check_nonce(_attr(parts[0], "r"))
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("invalid SCRAM response (nonce mismatch)")
        salt = _unb64(_attr(parts[1], "s"), "salt")
        iterations_text = _attr(parts[2], "i")
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise ScramError("malformed SCRAM message: invalid iteration count")
        iterations = int(iterations_text)
        if iterations < 1 or not salt:
            raise ScramError("malformed SCRAM message: invalid salt or iteration count")
        if self._password is not None:
            client_key, server_key = _salted_keys(self._password, salt, iterations)
        else:
            assert self._client_key is not None and self._server_key is not None
            client_key, server_key = self._client_key, self._server_key
        without_proof = f"c=biws,r={nonce}"
        auth_message = ",".join((self._client_first_bare, text, without_proof)).encode()
        proof = _xor(client_key, _hmac(_h(client_key), auth_message))
        self._expected_signature = _hmac(server_key, auth_message)
        self._state = "server-final"
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final-message; ``ScramError`` on an ``e=`` error or a bad signature."""
        self._expect("server-final")
        self._state = "failed"
        text = _decode(data)
        first = text.split(",", 1)[0]
        if first.startswith("e="):
            raise ScramError(f"server rejected SCRAM authentication: {first[2:]}")
        signature = _unb64(_attr(first, "v"), "server signature")
        if not hmac.compare_digest(signature, self._expected_signature):
            raise ScramError("invalid server signature: the server does not know the password")
        self._state = "done"
