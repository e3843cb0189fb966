"""DirectRoute: a FastAPI route whose request-only endpoints are called without FastAPI's parameter solving.

For an endpoint `async def endpoint(request: Request) -> Response`, which declares nothing for FastAPI to solve (the
hot model routes read their own options), FastAPI's request handler still solves an empty set of dependencies and
validates nothing, on every request. DirectRoute hands such an endpoint to FastAPI as the route handler itself,
through the documented extension point (APIRoute.get_route_handler, "Custom Request and APIRoute class" in FastAPI's
docs); FastAPI still wraps it (exception handlers, its exit stacks) and documents it in the OpenAPI schema. Any other
endpoint gets FastAPI's own handler."""

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if request_only(self.endpoint) and not self.dependencies:
            return self.endpoint
        return super().get_route_handler()


def request_only(endpoint: Callable[..., Any]) -> bool:
    """async (request: Request) -> Response: nothing for FastAPI to solve, nothing for it to serialise."""
    signature = inspect.signature(endpoint)
    parameters = list(signature.parameters.values())
    returns = signature.return_annotation
    return (inspect.iscoroutinefunction(endpoint) and len(parameters) == 1
            and parameters[0].annotation is Request and inspect.isclass(returns) and issubclass(returns, Response))
