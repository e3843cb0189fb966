"""What the model routes use: a model version, its batchers and the settings, once the service is ready.

Routes call `ready_serving(request)` instead of declaring a FastAPI dependency: FastAPI solves each dependency with a
second pass over the request's parameters, about 10 us per request, and this request path counts microseconds.

ready_serving leases the version it returns to the request (scope key LEASE): a version is not unloaded while a
request holds it, and VersionHeaderMiddleware sends `X-Model-Version` and ends the lease when the response is done."""

from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import contract
from service.batching import Batchers
from service.model import VaeModel
from service.settings import Settings

LEASE = "vae.model_version"  # scope key: the registry's Version record the request uses
NAMED = "vae.version_named"  # scope key: whether the request named its version (URL or path)


@dataclass(frozen=True)
class Serving:
    """One model version as the routes use it: built by the registry once the version is loaded."""

    model: VaeModel
    batchers: Batchers
    settings: Settings


def not_ready(app) -> HTTPException:
    """The 503 that /readyz and the model routes answer while no version is available (naming the failure if none
    could be served)."""
    retry_after = str(app.state.settings.retry_after_s)
    detail = app.state.failure or app.state.registry.not_ready_reason()
    return HTTPException(503, detail, headers={"Retry-After": retry_after})


def ready_serving(request: Request, version: int | str | None = None) -> Serving:
    """The Serving of the version this request uses: `version` if given, else the `version` query parameter, else the
    default (the newest the policy serves). 503 with Retry-After while no version is available; 404 naming the loaded
    versions for one that is not; 422 for a version that is not a positive integer). A second call in the same request
    returns the same version. `version` may be a path parameter's string (TF Serving's and KServe's
    /versions/{version} routes)."""
    scope = request.scope
    record = scope.get(LEASE)
    if record is not None:
        return record.serving
    routing = request.app.state.registry.routing
    if isinstance(version, str):
        version = parse_version(version)
    elif version is None and scope["query_string"]:
        version = parse_version(request.query_params.get("version"))
    if version is None:
        record = routing.default
        if record is None:
            raise not_ready(request.app)
    else:
        record = routing.versions.get(version)
        if record is None:
            if routing.default is None:
                raise not_ready(request.app)
            raise HTTPException(404, f"version {version} of model {routing.default.serving.model.name} is not "
                                     f"loaded; loaded versions: {sorted(routing.versions)}")
        scope[NAMED] = True
    record.leases += 1
    scope[LEASE] = record
    return record.serving


def parse_version(value: str | None) -> int | None:
    if value is None:
        return None
    if not contract.is_count(value) or int(value) < 1:
        raise HTTPException(422, f"version must be a positive integer, got {value!r}")
    return int(value)


def version_named(request: Request) -> bool:
    """Whether the request named its model version: only then may its answer be cached for long (without the version
    the same URL answers from the next version after a rollout)."""
    return request.scope.get(NAMED, False)


def cache_control(request: Request, max_age_s: int) -> str:
    """Cache-Control for an answer that depends only on the URL and the model version: long-lived when the URL
    names the version, else revalidated every time (with the ETag, which includes the version's fingerprint)."""
    return f"public, max-age={max_age_s}, immutable" if version_named(request) else "no-cache"


class VersionHeaderMiddleware:
    """Adds `X-Model-Version` to every response of a request that used a model version, and ends its lease when the
    response is done (or failed). Plain ASGI: a BaseHTTPMiddleware would cost far more per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start" and (record := scope.get(LEASE)) is not None:
                message["headers"] = [*message.get("headers", ()), (b"x-model-version", str(record.number).encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            if (record := scope.get(LEASE)) is not None:
                record.leases -= 1
