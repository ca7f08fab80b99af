"""The one table from engine errors to HTTP status codes and WebSocket close codes."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.observability import UPDATES
from engine.domain import errors as e

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013

# error class -> (HTTP status, WebSocket close code or None when the socket stays open)
TABLE: dict[type[e.TrackingError], tuple[int, int | None]] = {
    e.InvalidInput: (422, None),
    e.Unauthenticated: (401, POLICY_VIOLATION),
    e.Forbidden: (403, None),
    e.NotFound: (404, POLICY_VIOLATION),
    e.Expired: (410, POLICY_VIOLATION),
    e.Conflict: (409, None),
    e.TooLarge: (413, 1009),
    e.Unavailable: (503, TRY_AGAIN_LATER),
    e.RateLimited: (429, TRY_AGAIN_LATER),
}


def http_status(err: e.TrackingError) -> int:
    for cls in type(err).__mro__:
        if cls in TABLE:
            return TABLE[cls][0]
    return 500


def close_code(err: e.TrackingError) -> int | None:
    for cls in type(err).__mro__:
        if cls in TABLE:
            return TABLE[cls][1]
    return None


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def describe_validation(errors: list[Any]) -> str:
    """One readable sentence out of pydantic's error list."""
    msgs = []
    for err in errors[:5]:
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            msgs.append("request body is not valid JSON")
        elif err.get("type") == "missing":
            msgs.append(f"{_field(loc)} is required")
        else:
            msgs.append(f"{_field(loc)}: {msg}")
    return "; ".join(msgs) or "invalid request"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into JSON with a `detail` string."""

    async def tracking_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, e.TrackingError)
        request.state.error_code = exc.code
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, e.Unauthenticated) else None
        if isinstance(exc, e.RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        return JSONResponse({"detail": exc.detail}, http_status(exc), headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        request.state.error_code = "invalid"
        if request.url.path.startswith("/tracking/update/"):
            UPDATES.labels("http", "invalid").inc()
        errs = list(exc.errors())
        body = {
            "detail": describe_validation(errs),
            "errors": [
                {"loc": [str(x) for x in er.get("loc", ())], "msg": str(er.get("msg", "")),
                 "type": str(er.get("type", ""))}
                for er in errs[:20]
            ],
        }
        return JSONResponse(body, 422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    app.add_exception_handler(e.TrackingError, tracking_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
