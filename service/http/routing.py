"""LeanRoute: a FastAPI route that calls a request-only endpoint directly.

For an endpoint `async def endpoint(request: Request) -> Response`, which declares nothing for FastAPI to solve (the
model routes read their own options: see payloads.query_flag and deps.ready_serving), FastAPI's handler still solves
an empty set of dependencies, opens two AsyncExitStacks and wraps the call for exception handlers, on every
request. LeanRoute calls such endpoints directly; their exceptions reach the same handlers through the app's
ExceptionMiddleware. It stays an APIRoute, so the OpenAPI schema does not change. Any other endpoint gets FastAPI's
handler."""

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send


class LeanRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if _request_only(endpoint) and not self.dependencies:
            self.app = _direct(endpoint)


def _request_only(endpoint: Callable[..., Any]) -> bool:
    """async (request: Request) -> Response: nothing for FastAPI to solve, nothing for it to serialise."""
    signature = inspect.signature(endpoint)
    parameters = list(signature.parameters.values())
    returns = signature.return_annotation
    return (inspect.iscoroutinefunction(endpoint) and len(parameters) == 1
            and parameters[0].annotation is Request and inspect.isclass(returns) and issubclass(returns, Response))


def _direct(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return app
