"""One error hierarchy for the whole service.

The domain and the engine raise these; `api/errors.py` maps each class to an HTTP status and a
WebSocket close code in one table. Each error carries a `detail` a person can act on, and a short
`code` that survives the trip across process boundaries (Ray) as plain data.
"""

from __future__ import annotations

from typing import ClassVar


class TrackingError(Exception):
    """Root of every error the engine reports to its callers."""

    code: ClassVar[str] = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_wire(self) -> tuple[str, str]:
        return (self.code, self.detail)


class InvalidInput(TrackingError):
    """A value that breaks the contract's rules (coordinates, sizes, formats)."""

    code = "invalid"


class Unauthenticated(TrackingError):
    """A token is required and missing, or present and invalid."""

    code = "unauthenticated"


class Forbidden(TrackingError):
    """The principal is known but may not do this."""

    code = "forbidden"


class NotFound(TrackingError):
    """No such session (never existed, or purged after expiry)."""

    code = "not_found"


class Expired(TrackingError):
    """The session exists but has expired."""

    code = "expired"

    def __init__(self, detail: str = "Tracking session expired") -> None:
        super().__init__(detail)


class Conflict(TrackingError):
    """The request conflicts with the session's state (status machine, duplicate order)."""

    code = "conflict"


class TooLarge(TrackingError):
    """A request or message bigger than the service takes."""

    code = "too_large"


class Unavailable(TrackingError):
    """The engine cannot answer right now (a shard is restarting); retrying later may work."""

    code = "unavailable"


_BY_CODE: dict[str, type[TrackingError]] = {
    cls.code: cls
    for cls in (
        InvalidInput, Unauthenticated, Forbidden, NotFound, Expired, Conflict, TooLarge,
        Unavailable,
    )
}


def from_wire(code: str, detail: str) -> TrackingError:
    """Rebuild an error sent across a process boundary by `TrackingError.to_wire`."""
    cls = _BY_CODE.get(code, TrackingError)
    err = cls.__new__(cls)
    TrackingError.__init__(err, detail)
    return err


class RateLimited(TrackingError):
    """Too many requests from one principal or address; `retry_after_s` says when to come back."""

    code = "rate_limited"
    retry_after_s: float = 1.0

    def __init__(self, detail: str, retry_after_s: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


_BY_CODE[RateLimited.code] = RateLimited
