"""The proxy's own errors and their one mapping to ErrorResponse.

Owns: every exception the router raises for a client to see, each with its SQLSTATE,
severity and a message that says what to do; ``error_response()``, the single place where
an exception becomes wire bytes.
Must not touch: sockets (callers write the bytes), policy.
"""

from __future__ import annotations

from protocol import sqlstate
from protocol.backend import ErrorResponse
from protocol.errors import MessageTooLarge, ProtocolError


class ProxyError(Exception):
    """Base: an error a client should see as an ErrorResponse."""

    sqlstate: str = sqlstate.INTERNAL_ERROR
    fatal: bool = False

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class ClientProtocolViolation(ProxyError):
    sqlstate = sqlstate.PROTOCOL_VIOLATION
    fatal = True


class LoginTimeout(ProxyError):
    sqlstate = sqlstate.PROTOCOL_VIOLATION
    fatal = True


class AuthenticationFailed(ProxyError):
    """Wrong password or unknown user: one message for both, so neither is revealed."""

    sqlstate = sqlstate.INVALID_PASSWORD
    fatal = True

    def __init__(self, user: str) -> None:
        super().__init__(f'password authentication failed for user "{user}"')


class AuthorizationFailed(ProxyError):
    sqlstate = sqlstate.INVALID_AUTHORIZATION_SPECIFICATION
    fatal = True


class UnknownDatabase(ProxyError):
    sqlstate = sqlstate.INVALID_CATALOG_NAME
    fatal = True

    def __init__(self, database: str) -> None:
        super().__init__(
            f'database "{database}" does not exist',
            hint="pgrouter only serves the databases listed under databases: in its config",
        )


class TooManyClients(ProxyError):
    sqlstate = sqlstate.TOO_MANY_CONNECTIONS
    fatal = True


class FeatureNotSupported(ProxyError):
    sqlstate = sqlstate.FEATURE_NOT_SUPPORTED
    fatal = True


class BackendUnavailable(ProxyError):
    """A server could not be reached (08001) or was lost (08006)."""

    sqlstate = sqlstate.CONNECTION_FAILURE
    fatal = True

    def __init__(self, message: str, *, lost: bool = True, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sqlstate = (
            sqlstate.CONNECTION_FAILURE
            if lost
            else sqlstate.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
        )


class PoolTimeout(ProxyError):
    sqlstate = sqlstate.QUERY_CANCELED
    fatal = True


class IdleTransactionTimeout(ProxyError):
    sqlstate = sqlstate.IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    fatal = True


class InvalidStartupLsn(ProxyError):
    sqlstate = sqlstate.INVALID_TEXT_REPRESENTATION
    fatal = True


class ShuttingDown(ProxyError):
    sqlstate = sqlstate.ADMIN_SHUTDOWN
    fatal = True


class ServerError(ProxyError):
    """An ErrorResponse a server sent during work the proxy did on the client's behalf
    (login, applying startup parameters); passed on as the server worded it."""

    def __init__(self, response: ErrorResponse, *, fatal: bool = True) -> None:
        super().__init__(response.message or "server error")
        self.response = response
        self.sqlstate = response.sqlstate or sqlstate.INTERNAL_ERROR
        self.fatal = fatal


def error_response(exc: BaseException) -> ErrorResponse:
    """The ErrorResponse a client receives for ``exc``; unknown exceptions are XX000."""
    if isinstance(exc, ServerError):
        fields = dict(exc.response.fields)
        fields["S"] = fields["V"] = "FATAL" if exc.fatal else "ERROR"
        return ErrorResponse(tuple(fields.items()))
    if isinstance(exc, ProxyError):
        severity = "FATAL" if exc.fatal else "ERROR"
        return ErrorResponse.build(
            severity, exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint
        )
    if isinstance(exc, MessageTooLarge):
        return ErrorResponse.build(
            "FATAL",
            sqlstate.PROTOCOL_VIOLATION,
            f"invalid message: {exc}",
            hint="raise listen.max_message_size if such messages are legitimate",
        )
    if isinstance(exc, ProtocolError):
        return ErrorResponse.build("FATAL", sqlstate.PROTOCOL_VIOLATION, f"invalid message: {exc}")
    return ErrorResponse.build(
        "FATAL", sqlstate.INTERNAL_ERROR, f"pgrouter internal error: {type(exc).__name__}: {exc}"
    )
