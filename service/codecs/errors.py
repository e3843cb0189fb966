"""Errors on the standard protocols' paths are {"error": "..."} (KServe v2, TF Serving REST), ours stay
{"detail": "..."}. The path rule is the one service/errors.py uses for errors raised before a route runs."""

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service.responses import json_response

PROTOCOL_PREFIXES = ("/v2/", "/v1/models/")


def is_protocol_path(path: str) -> bool:
    return path == "/v2" or path.startswith(PROTOCOL_PREFIXES)


def install_protocol_error_handler(app: FastAPI) -> None:
    """HTTPExceptions (raised in a route, or Starlette's 404/405) on protocol paths answer {"error": ...}."""

    async def handler(request: Request, exc: HTTPException) -> Response:
        if not is_protocol_path(request.url.path):
            return await http_exception_handler(request, exc)
        return json_response({"error": exc.detail}, headers=exc.headers, status=exc.status_code)

    app.add_exception_handler(HTTPException, handler)
