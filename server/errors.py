"""Errors a resolver raises on purpose; `extensions.code` is what Prefect clients branch on."""

from __future__ import annotations

from typing import Any

from loguru import logger


class ApiError(Exception):
    """An expected, user-facing failure: the message goes to the client verbatim."""

    code = "BAD_REQUEST"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class VersionLockError(ApiError):
    """Prefect's `VersionLockMismatchSignal` trigger; the message starts with `State update failed`."""

    code = "VERSION_LOCKING_ERROR"


class NotFoundError(ApiError):
    code = "NOT_FOUND"


class UnauthenticatedError(ApiError):
    """The text contains UNAUTHENTICATED so the Prefect client raises AuthorizationError."""

    code = "UNAUTHENTICATED"


class ForbiddenError(ApiError):
    code = "FORBIDDEN"


class DatabaseUnavailableError(ApiError):
    """The database cannot be reached (down, restarting, connection reset): retryable, HTTP 503."""

    code = "SERVICE_UNAVAILABLE"


# SQLSTATE classes that mean the connection, not the statement, failed: 08 connection exception, 53
# insufficient resources (too many connections, out of memory or disk), 57P01-03 admin/crash shutdown and
# "cannot connect now" (a server starting or stopping).
_DISCONNECT_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03")


def database_unavailable(exc: BaseException) -> DatabaseUnavailableError | None:
    """The client-facing error when `exc` (or its cause) is a lost or refused database connection, else None.

    The message names the kind of failure only: the driver's text (host, port, user) goes to the server log.
    """
    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and _is_disconnect(current):
            reason = type(current.orig).__name__ if current.orig is not None else type(current).__name__
            return DatabaseUnavailableError(
                f"database unavailable: the server lost or cannot open its database connection ({reason}); "
                "retry shortly.")
        current = current.__cause__ or current.__context__
    return None


def _is_disconnect(exc: Any) -> bool:
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    module = type(orig).__module__
    if not module.startswith("psycopg"):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:  # libpq's own failures (refused, reset, closed) carry no SQLSTATE
        return type(orig).__name__ == "OperationalError" or "Connection" in type(orig).__name__
    return any(sqlstate.startswith(prefix) for prefix in _DISCONNECT_SQLSTATES)


def refused_value(exc: BaseException) -> ApiError | None:
    """A value the database refuses (NUL in text or JSON, a too long string, a number out of range: SQLSTATE
    class 22, or psycopg's own check) is bad input, not a server fault; SQLite stores it, PostgreSQL not."""
    from sqlalchemy.exc import DataError, DBAPIError

    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if not (isinstance(exc, DataError) or sqlstate.startswith("22")):
        return None
    logger.debug("the database refused a value: {}", first_line(exc))
    nul = sqlstate in NUL_SQLSTATES or "NUL" in str(exc.orig)
    detail = ("text and JSON may not contain NUL (\\x00) characters" if nul
              else "a value is too long or out of range for its field")
    return ApiError(f"The database refused a value: {detail}.", "BAD_USER_INPUT")


# 22021: invalid byte sequence (NUL in text); 22P05: untranslatable character (\u0000 in jsonb).
NUL_SQLSTATES = frozenset({"22021", "22P05"})


class OutageLog:
    """A database outage is logged once when it starts (with the driver's text) and once when it ends, not
    once per request: during an outage every request fails the same way."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, exc: BaseException) -> None:
        if self.down:
            logger.debug("request failed, database still unavailable: {}", first_line(exc))
            return
        self.down = True
        logger.warning("database unavailable, answering 503 until it is back: {}", first_line(exc))

    def ended(self) -> None:
        if self.down:
            self.down = False
            logger.info("database available again")


OUTAGE = OutageLog()


def first_line(exc: BaseException) -> str:
    """The exception's kind and the first line of its (driver's) text, for one log line."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
