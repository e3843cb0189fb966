"""Error bodies and exception handlers: {"detail": "<what is wrong>"} on our routes, {"error": ...} on the standard
protocols' paths (KServe v2 under /v2, TF Serving REST under /v1/models/), as their clients expect."""

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.batching import QueueFullError, ShuttingDownError
from service.responses import json_response

STANDARD_PROTOCOL_PREFIXES = ("/v2/", "/v1/models/")


def uses_error_key(path: str) -> bool:
    """Whether `path` belongs to a standard protocol whose errors are {"error": ...}."""
    return path == "/v2" or path.startswith(STANDARD_PROTOCOL_PREFIXES)


def error_body(path: str, message: str) -> dict[str, str]:
    """The error object for `path`'s protocol. Used wherever an error is answered before a route runs (limits,
    timeouts, access control), so that every protocol's clients can read it."""
    return {"error": message} if uses_error_key(path) else {"detail": message}


class RequestFailed(HTTPException):
    """An error found by the guard or a limit rather than by a route (408, 413, 503...): answered in the path's
    protocol's error shape, with `Connection: close` since the rest of the request may still be on its way. An
    HTTPException, so that FastAPI's body reading passes it on instead of turning it into a 400."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, {**(headers or {}), "Connection": "close"})


def failed_response(path: str, exc: HTTPException) -> Response:
    return json_response(error_body(path, exc.detail), status=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Handlers for errors with a known meaning. Anything else is answered by RequestGuard (service/middleware.py):
    a JSON 500 with `Connection: close`, where Starlette's own handler would re-raise and uvicorn reset the socket."""

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default is a list of error objects; one readable line naming the parameter is easier to act on.
        problems = "; ".join(f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors())
        return json_response(error_body(request.url.path, problems), status=422)

    async def overloaded(request: Request, exc: QueueFullError | ShuttingDownError) -> Response:
        return json_response(error_body(request.url.path, f"{exc}; retry later"), status=503,
                             headers={"Retry-After": str(retry_after_s)})

    async def request_failed(request: Request, exc: RequestFailed) -> Response:
        return failed_response(request.url.path, exc)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Raised in a route, or Starlette's own 404/405: {"error": ...} on the standard protocols' paths."""
        if not uses_error_key(request.url.path):
            return await http_exception_handler(request, exc)
        return failed_response(request.url.path, exc)

    app.add_exception_handler(RequestFailed, request_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(QueueFullError, overloaded)
    app.add_exception_handler(ShuttingDownError, overloaded)
