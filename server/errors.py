"""One JSON error shape for every failure the API can answer with.

    {"error": {"message": "...", "type": "permission_error", "code": "kb_forbidden"}}

It is OpenAI's shape, so the `openai` client and OpenAI-compatible front-ends show the message
itself; FastAPI's own errors (an unknown path, a body that does not validate) are turned into it
too.  `message` is written for the person who reads it: what is wrong and what to do.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.config import InvalidKBName
from rag.store import KBError, KBLocked, KBReadOnly, StoreUnavailable

log = logging.getLogger("rag.server")

RETRY_BUSY_S = 5  # Retry-After for a knowledge base another writer holds

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "llm_error",
    503: "service_unavailable",
    507: "server_error",
}


class APIError(Exception):
    """An answer other than success: raised anywhere below a route, answered in the one shape."""

    def __init__(self, status: int, message: str, code: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.code, self.retry_after)


def error_response(
    status: int, message: str, code: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def from_kb_error(exc: Exception) -> APIError:
    """A knowledge-base problem as the status a client can act on: busy (409, retry), read-only
    (409), store down (503), anything else (a missing base, a model mismatch) 404 or 400."""
    message = str(exc)
    if isinstance(exc, KBLocked):
        return APIError(409, message, "kb_busy", retry_after=RETRY_BUSY_S)
    if isinstance(exc, KBReadOnly):
        return APIError(409, message, "kb_read_only")
    if isinstance(exc, StoreUnavailable):
        return APIError(503, message, "store_unavailable", retry_after=RETRY_BUSY_S)
    if isinstance(exc, InvalidKBName):
        return APIError(400, message, "invalid_kb_name")
    if message.startswith("no knowledge base"):  # deleted between our check and the store's (its text names paths)
        return APIError(404, "no such knowledge base (it may have just been deleted)", "kb_not_found")
    return APIError(400, message, "kb_error")


def install(app: FastAPI) -> None:
    """Route every error, ours and the framework's, through the one shape."""

    @app.exception_handler(APIError)
    async def _ours(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(KBError)
    async def _kb(_: Request, exc: KBError) -> JSONResponse:
        return from_kb_error(exc).response()

    @app.exception_handler(InvalidKBName)
    async def _name(_: Request, exc: InvalidKBName) -> JSONResponse:
        return from_kb_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "no such endpoint; see /docs for the API"
        return error_response(exc.status_code, message, getattr(exc, "code", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(_explain(e) for e in exc.errors()[:5])
        return error_response(422, f"invalid request: {problems}", "invalid_request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _explain(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
