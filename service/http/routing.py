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

from fastapi import APIRouter, FastAPI, Request, Response
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


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """`router`'s routes added to the app's own router with FastAPI's public `APIRouter.add_api_route`, for the
    protocols' hot routers. FastAPI 0.165 serves an included router's routes through a resolution layer that
    matches each request twice: about 70 us more event-loop time per v2 inference request and 30 us per /v1/encode
    on this VM (`bench/serve_ab.py`, docs/design.md). The same routes, handlers and OpenAPI schema as include_router
    gives."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"add_routes takes API routes only, got {route!r}")
        app.router.add_api_route(
            route.path, route.endpoint, methods=sorted(route.methods), name=route.name, tags=route.tags,
            summary=route.summary, description=route.description, response_description=route.response_description,
            response_model=route.response_model, responses=route.responses, status_code=route.status_code,
            response_class=route.response_class, deprecated=route.deprecated, operation_id=route.operation_id,
            include_in_schema=route.include_in_schema, openapi_extra=route.openapi_extra,
            dependencies=route.dependencies, route_class_override=type(route))
