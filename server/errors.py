"""Errors a resolver raises on purpose; `extensions.code` is what Prefect clients branch on."""

from __future__ import annotations


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
