"""LeanRoute calls request-only endpoints directly and leaves the others to FastAPI."""

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.routing import LeanRoute


def direct(route) -> bool:
    return isinstance(route, LeanRoute) and route.app.__qualname__.startswith("_direct")


def test_the_hot_model_routes_are_direct_and_documented():
    app = create_app()
    routes = {(route.path, method): route for route in app.routes for method in getattr(route, "methods", ())}
    for key in (("/v1/encode", "POST"), ("/v2/models/{name}/infer", "POST"), ("/v1/models/{name}:predict", "POST")):
        assert direct(routes[key]), key
    assert not direct(routes[("/v1/decode", "POST")])  # it declares query parameters: FastAPI solves them
    assert "/v2/models/{name}/infer" in app.openapi()["paths"]


def test_direct_and_fastapi_handled_endpoints_answer_alike():
    router = APIRouter(route_class=LeanRoute)

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
    app.router.routes.extend(router.routes)
    assert [direct(route) for route in router.routes] == [True, False]
    with TestClient(app) as client:
        for path in ("/lean", "/declared"):
            assert client.get(path).text == path
            failed = client.get(path, params={"fail": "true"})
            assert (failed.status_code, failed.json()) == (418, {"detail": "as asked"})
