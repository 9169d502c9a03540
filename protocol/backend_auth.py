"""Authentication requests a server sends (tag 'R'), told apart by their Int32 code.

Owns: encoding and decoding the 'R' family. ``protocol.backend`` re-exports every name
here and dispatches to ``decode_auth``; import from there.
Must not touch: the authentication exchange itself (md5.py, scram.py, the router),
sockets, asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from protocol._wire import INT32, BodyReader, cstr, frame
from protocol.errors import ProtocolError


class _Auth:
    """Shared codec of the 'R' messages whose body is only the code."""

    __slots__ = ()
    TAG: ClassVar[str] = "R"
    CODE: ClassVar[int]

    def encode(self) -> bytes:
        return frame(b"R", INT32.pack(self.CODE))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        _expect_code(reader, cls.CODE)
        reader.finish()
        return cls()


def _expect_code(reader: BodyReader, code: int) -> None:
    got = reader.int32()
    if got != code:
        raise reader.error(f"authentication code {got}, expected {code}")


@dataclass(frozen=True, slots=True)
class AuthenticationOk(_Auth):
    CODE: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(_Auth):
    CODE: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    TAG: ClassVar[str] = "R"
    CODE: ClassVar[int] = 5
    salt: bytes

    def encode(self) -> bytes:
        if len(self.salt) != 4:
            raise ValueError(f"MD5 salt must be 4 bytes, not {len(self.salt)}")
        return frame(b"R", INT32.pack(self.CODE) + self.salt)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        _expect_code(reader, cls.CODE)
        salt = reader.take(4)
        reader.finish()
        return cls(salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    """The SASL mechanisms the server accepts, in its order of preference."""

    TAG: ClassVar[str] = "R"
    CODE: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        names = b"".join(cstr(m) for m in self.mechanisms)
        return frame(b"R", INT32.pack(self.CODE) + names + b"\x00")

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        _expect_code(reader, cls.CODE)
        mechanisms: list[str] = []
        while name := reader.cstring():
            mechanisms.append(name)
        reader.finish()
        return cls(tuple(mechanisms))


class _AuthData:
    """Shared codec of the 'R' messages carrying mechanism data after the code."""

    __slots__ = ()
    TAG: ClassVar[str] = "R"
    CODE: ClassVar[int]
    data: bytes

    def encode(self) -> bytes:
        return frame(b"R", INT32.pack(self.CODE) + self.data)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        _expect_code(reader, cls.CODE)
        return cls(reader.rest())  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(_AuthData):
    """Carries the SCRAM server-first-message."""

    CODE: ClassVar[int] = 11
    data: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(_AuthData):
    """Carries the SCRAM server-final-message."""

    CODE: ClassVar[int] = 12
    data: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationUnsupported:
    """Any other request (KerberosV5 2, GSS 7, GSSContinue 8, SSPI 9...), kept verbatim."""

    TAG: ClassVar[str] = "R"
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        return frame(b"R", INT32.pack(self.code) + self.data)

    @classmethod
    def decode(cls, body: bytes) -> Self:
        reader = BodyReader(body, f"{cls.__name__} message")
        code = reader.int32()
        return cls(code, reader.rest())


_AUTH_DECODERS: dict[int, type[_Auth] | type[_AuthData] | type[AuthenticationMD5Password]] = {
    0: AuthenticationOk,
    3: AuthenticationCleartextPassword,
    5: AuthenticationMD5Password,
    11: AuthenticationSASLContinue,
    12: AuthenticationSASLFinal,
}


def decode_auth(body: bytes) -> Authentication:
    if len(body) < 4:
        raise ProtocolError("invalid Authentication message: truncated Int32")
    (code,) = INT32.unpack_from(body, 0)
    if code == AuthenticationSASL.CODE:
        return AuthenticationSASL.decode(body)
    cls = _AUTH_DECODERS.get(code)
    if cls is None:
        return AuthenticationUnsupported.decode(body)
    return cls.decode(body)  # type: ignore[return-value]


Authentication = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | AuthenticationUnsupported
)
