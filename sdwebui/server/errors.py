"""Error responses: every failure is JSON that names what went wrong, never a traceback.

- Bad input: 422 in FastAPI's shape (`{"detail": [{"loc": ["body", "width"], "msg": ..., "type": ...}]}`, which
  A1111 clients already understand) plus `error`, `field` and `message` at the top for humans and simple
  clients. Pydantic's errors and our own `FieldError` (a `ParamError` from the parameter dataclasses mapped to
  the request's field name) look the same.
- The database cannot be written now (disk full, locked by another process): 503 `{"error": "unavailable",
  "detail": ...}` with `Retry-After`, whatever the route; nothing was changed.
- Anything unexpected: 500 `{"error": "internal_error", "detail": ..., "id": ...}`; the traceback goes to the
  server log under that id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdwebui.server.store import StoreUnavailable

log = logging.getLogger(__name__)


class FieldError(Exception):
    """Bad input in one field, found after pydantic's checks (a ParamError, an unknown model, ...)."""

    def __init__(self, loc: Sequence[str | int], message: str, *, kind: str = "value_error", status: int = 422):
        super().__init__(message)
        self.loc = tuple(loc)
        self.message = message
        self.kind = kind
        self.status = status


def field_name(loc: Sequence[str | int]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(parts)


def validation_response(errors: list[dict], status: int = 422) -> JSONResponse:
    detail = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
        for error in errors
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    return JSONResponse(
        status_code=status,
        content={
            "error": "validation_error",
            "field": field_name(first["loc"]),
            "message": first["msg"],
            "detail": detail,
        },
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError):
        return validation_response(list(error.errors()))

    @app.exception_handler(FieldError)
    async def on_field_error(request: Request, error: FieldError):
        return validation_response([{"loc": ["body", *error.loc], "msg": error.message, "type": error.kind}],
                                   status=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException):
        detail = error.detail if error.detail is not None else ""
        return JSONResponse(
            status_code=error.status_code,
            content={"error": _error_code(error.status_code), "detail": detail},
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(StoreUnavailable)
    async def on_store_unavailable(request: Request, error: StoreUnavailable):
        return unavailable_response(error)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception):
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", incident, request.method, request.url.path, exc_info=error)
        return JSONResponse(
            status_code=500,
            content={"error": "internal_error", "detail": f"internal server error (logged as {incident})",
                     "id": incident},
        )


RETRY_AFTER_SECONDS = 10


def unavailable_response(error: StoreUnavailable) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": "unavailable", "detail": str(error)},
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _error_code(status: int) -> str:
    return {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
        409: "conflict", 413: "payload_too_large", 421: "misdirected_request", 422: "validation_error",
        429: "too_many_requests", 503: "unavailable",
    }.get(status, "error")


__all__ = ["FieldError", "install_error_handlers", "validation_response", "field_name", "unavailable_response"]
