"""Exception handlers: every error is JSON {"detail": "<what is wrong>"}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from service.batching import QueueFullError, ShuttingDownError
from service.responses import json_response

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default is a list of error objects; one readable line naming the parameter is easier to act on.
        problems = "; ".join(f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors())
        return json_response({"detail": problems}, status=422)

    async def overloaded(request: Request, exc: QueueFullError | ShuttingDownError) -> Response:
        return json_response({"detail": f"{exc}; retry later"}, status=503,
                             headers={"Retry-After": str(retry_after_s)})

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return json_response({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status=500)

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(QueueFullError, overloaded)
    app.add_exception_handler(ShuttingDownError, overloaded)
    app.add_exception_handler(Exception, unexpected)
