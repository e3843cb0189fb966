"""Error bodies and exception handlers: {"detail": "<what is wrong>"} on our routes, {"error": ...} on the standard
protocols' paths (KServe v2 under /v2, TF Serving REST under /v1/models/), as their clients expect.

The serving layer's errors (ServingError) get their status from the protocol's own table (each protocol's package
declares STATUS), found by the request's path."""

from collections.abc import Callable, Mapping

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.http.responses import json_response
from service.serving.errors import (
    DeadlineExceededError,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    ServingError,
    Unsupported,
)

STANDARD_PROTOCOL_PREFIXES = ("/v2/", "/v1/models/")
StatusTable = Mapping[type[ServingError], int]
# The serving layer's errors as the tensor protocols' REST APIs (KServe v2, TF Serving) answer them: every bad input
# is a 400, as their servers answer.
TENSOR_PROTOCOL_STATUS: StatusTable = {InvalidInput: 400, NotFound: 404, Unsupported: 400, NotReady: 503,
                                       Overloaded: 503, DeadlineExceededError: 504, ServingError: 500}


def uses_error_key(path: str) -> bool:
    """Whether `path` belongs to a standard protocol whose errors are {"error": ...}."""
    return path == "/v2" or path.startswith(STANDARD_PROTOCOL_PREFIXES)


def error_body(path: str, message: str) -> dict[str, str]:
    """The error object for `path`'s protocol. Used wherever an error is answered before a route runs (limits,
    timeouts, access control), so that every protocol's clients can read it."""
    return {"error": message} if uses_error_key(path) else {"detail": message}


class Problem(BaseModel):
    """The error body of our /v1 routes and probes (documentation: the handlers below write it)."""

    detail: str = Field(examples=["'latents' items must have shape [16], got [3]"])


class ProtocolError(HTTPException):
    """A client error found while decoding a standard protocol's request; answered as {"error": message}."""


class RequestFailed(HTTPException):
    """An error found by the guard or a limit rather than by a route (408, 413, 503...): answered in the path's
    protocol's error shape, with `Connection: close` since the rest of the request may still be on its way. An
    HTTPException, so that FastAPI's body reading passes it on instead of turning it into a 400."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, {**(headers or {}), "Connection": "close"})


def failed_response(path: str, exc: HTTPException) -> Response:
    return json_response(error_body(path, exc.detail), status=exc.status_code, headers=exc.headers)


def status_of(exc: ServingError, table: StatusTable) -> int:
    """The status `table` gives the most specific class `exc` is an instance of."""
    return next(table[cls] for cls in type(exc).__mro__ if cls in table)


def install_error_handlers(app: FastAPI, retry_after_s: int,
                           protocols: list[tuple[Callable[[str], bool], StatusTable]]) -> None:
    """Handlers for errors with a known meaning. `protocols`: (does a path belong to it, its status table) for each
    protocol, the fallback (our /v1 routes) last. Anything else is answered by RequestGuard (http/middleware.py): a
    JSON 500 with `Connection: close`, where Starlette's own handler would re-raise and uvicorn reset the socket."""

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default is a list of error objects; one readable line naming the parameter is easier to act on.
        problems = "; ".join(f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors())
        return json_response(error_body(request.url.path, problems), status=422)

    async def serving_error(request: Request, exc: ServingError) -> Response:
        path = request.url.path
        table = next(table for belongs, table in protocols if belongs(path))
        status = status_of(exc, table)
        headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
        return json_response(error_body(path, exc.message), status=status, headers=headers)

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
    app.add_exception_handler(ServingError, serving_error)
