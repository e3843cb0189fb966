"""DirectRoute hands request-only endpoints to FastAPI as their own handlers and leaves the others to FastAPI."""

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient

from service.api.kserve_v2 import routes as v2
from service.api.tfserving import routes as tfserving
from service.api.v1 import inference
from service.app import create_app
from service.http.routing import DirectRoute


def direct(route) -> bool:
    return isinstance(route, DirectRoute) and route.get_route_handler() is route.endpoint


def test_the_hot_model_routes_are_direct_and_documented():
    app = create_app()
    routers = (inference.router, v2.router, tfserving.router)
    routes = {(route.path, method): route for router in routers for route in router.routes for method in route.methods}
    for key in (("/v1/encode", "POST"), ("/v2/models/{name}/infer", "POST"), ("/v1/models/{name}:predict", "POST")):
        assert direct(routes[key]), key
        assert key[0] in app.openapi()["paths"]
    assert not direct(routes[("/v1/decode", "POST")])  # it declares query parameters: FastAPI solves them


def test_direct_and_fastapi_handled_endpoints_answer_alike():
    router = APIRouter(route_class=DirectRoute)

    @router.get("/lean")
    async def lean(request: Request) -> Response:
        if "fail" in request.query_params:
            raise HTTPException(418, "as asked")
        return Response(request.url.path)

    @router.get("/declared")
    async def declared(request: Request, fail: bool = False) -> Response:
        if fail:
            raise HTTPException(418, "as asked")
        return Response(request.url.path)

    app = FastAPI()
    app.include_router(router)
    assert [direct(route) for route in router.routes] == [True, False]
    with TestClient(app) as client:
        for path in ("/lean", "/declared"):
            assert client.get(path).text == path
            failed = client.get(path, params={"fail": "true"})
            assert (failed.status_code, failed.json()) == (418, {"detail": "as asked"})


def test_app_routes_turn_away_exactly_the_paths_fastapi_would():
    """AppRoute's literal prefix and suffix check answers as FastAPI's own matching, for every hot route."""
    from starlette.routing import Match

    from service.http.routing import AppRoute

    app = create_app()
    routes = [route for route in app.router.routes if isinstance(route, AppRoute)]
    assert {"/v1/encode", "/v2/models/{name}/infer", "/v1/models/{name}:predict"} <= {route.path for route in routes}
    paths = ["/v1/encode", "/v1/encode/", "/v1/encodex", "/v2", "/v2/", "/v2/models/mnist_vae/infer",
             "/v2/models/mnist_vae/versions/2/infer", "/v2/models/a/b/infer", "/v2/models//infer", "/v2/models/x",
             "/v2/models/x/ready", "/v2/health/live", "/v1/models/mnist_vae:predict", "/v1/models/m/versions/1:predict",
             "/v1/models/mnist_vae/metadata", "/v1/models/:predict", "/healthz", "/", ""]
    for route in routes:
        for path in paths:
            for method in ("GET", "POST"):
                scope = {"type": "http", "path": path, "root_path": "", "method": method}
                assert route.matches(dict(scope)) == super(AppRoute, route).matches(dict(scope)), (route.path, path)
    # Under a root path AppRoute defers to FastAPI's matching (one smoke case, not a proof).
    encode = next(route for route in routes if route.path == "/v1/encode")
    scope = {"type": "http", "path": "/api/v1/encode", "root_path": "/api", "method": "POST"}
    assert encode.matches(scope)[0] is Match.FULL
    # The one difference, on purpose: Starlette's `$` lets a path ending in a newline (%0A) through; AppRoute does not.
    scope = {"type": "http", "path": "/v1/encode\n", "root_path": "", "method": "POST"}
    assert super(AppRoute, encode).matches(dict(scope))[0] is Match.FULL
    assert encode.matches(dict(scope))[0] is Match.NONE
