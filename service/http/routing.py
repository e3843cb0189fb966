"""DirectRoute: a FastAPI route whose request-only endpoints are called without FastAPI's parameter solving.

For an endpoint `async def endpoint(request: Request) -> Response`, which declares nothing for FastAPI to solve (the
hot model routes read their own options), FastAPI's request handler still solves an empty set of dependencies and
validates nothing, on every request. DirectRoute hands such an endpoint to FastAPI as the route handler itself,
through the documented extension point (APIRoute.get_route_handler, "Custom Request and APIRoute class" in FastAPI's
docs); FastAPI still wraps it (exception handlers, its exit stacks) and documents it in the OpenAPI schema. Any other
endpoint gets FastAPI's own handler.

AppRoute is the DirectRoute that `add_routes` puts on the app's own router for the hot protocol routers. A request
is matched against the routes in order, and FastAPI's matching of each route it passes costs 0.6 to 0.8 us (its
included-router context, then the path's regular expression; docs/design.md). AppRoute.matches first compares the
path with the route's literal prefix and suffix (`/v2/models/`, `/infer`) and turns a path without them away at once
(0.2 us), as the regular expression would, with one difference: Starlette's pattern ends in `$`, which also
matches before a final newline, so `/v1/encode%0A` reached /v1/encode; AppRoute answers it 404."""

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if request_only(self.endpoint) and not self.dependencies:
            return self.endpoint
        return super().get_route_handler()


class AppRoute(DirectRoute):
    """A DirectRoute whose path is final (on the app's own router, not inside an included router, whose routes FastAPI
    matches through its own context): see the module's docstring."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        literal = "{" not in self.path_format
        # A path without parameters is matched by equality; else it must start and end as the template does.
        self._exact = self.path_format if literal else None
        self._prefix = self.path_format.partition("{")[0]
        self._suffix = "" if literal else self.path_format.rpartition("}")[2]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not scope.get("root_path"):  # under a root path: FastAPI's own matching
            path = scope["path"]
            if (path != self._exact) if self._exact is not None else not (
                    path.startswith(self._prefix) and path.endswith(self._suffix)):
                return Match.NONE, {}
        return super().matches(scope)


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
    gives; DirectRoutes become AppRoutes."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"add_routes takes API routes only, got {route!r}")
        app.router.add_api_route(
            route.path, route.endpoint, methods=sorted(route.methods), name=route.name, tags=route.tags,
            summary=route.summary, description=route.description, response_description=route.response_description,
            response_model=route.response_model, responses=route.responses, status_code=route.status_code,
            response_class=route.response_class, deprecated=route.deprecated, operation_id=route.operation_id,
            include_in_schema=route.include_in_schema, openapi_extra=route.openapi_extra,
            dependencies=route.dependencies,
            route_class_override=AppRoute if type(route) is DirectRoute else type(route))
