"""The model version a request uses: chosen and leased through the data plane, named in the answer.

`ready_serving(request)` leases the version it returns to the request (scope key LEASE): a version is not unloaded
while a request holds it, and VersionHeaderMiddleware sends `X-Model-Version` and ends the lease when the response is
done."""

from fastapi import Request
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import contract
from service.http.openapi import query_parameters
from service.serving.dataplane import DataPlane
from service.serving.errors import InvalidInput
from service.serving.registry import Serving


class VersionOption(BaseModel):
    """The `version` query parameter, read by ready_serving: for the routes' OpenAPI documentation."""

    version: int | None = Field(None, ge=1, description=(
        "Model version to answer with (404 if not loaded); absent: the newest served. The answer's X-Model-Version "
        "header names the version that answered."))


VERSION_PARAMETERS = query_parameters(VersionOption)
LEASE = "vae.model_version"  # scope key: the registry's Version record the request uses
NAMED = "vae.version_named"  # scope key: whether the request named its version (URL or path)


def ready_serving(request: Request, version: int | str | None = None) -> Serving:
    """The Serving of the version this request uses: `version` if given, else the `version` query parameter, else the
    default (the newest the policy serves). NotReady while no version is available, NotFound for a version that is
    not loaded, 422 for a version that is not a positive integer. A second call in the same request returns the same
    version. `version` may be a path parameter's string (TF Serving's and KServe's /versions/{version} routes)."""
    scope = request.scope
    record = scope.get(LEASE)
    if record is not None:
        return record.serving
    if isinstance(version, str):
        version = parse_version(version)
    elif version is None and scope["query_string"]:
        version = parse_version(request.query_params.get("version"))
    dataplane: DataPlane = request.app.state.dataplane
    record = dataplane.lease(version)
    scope[NAMED] = version is not None
    scope[LEASE] = record
    return record.serving


def parse_version(value: str | None) -> int | None:
    if value is None:
        return None
    if not contract.is_count(value) or int(value) < 1:  # each protocol's table: 422 on /v1, 400 on the others
        raise InvalidInput(f"version must be a positive integer, got {value!r}")
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
                DataPlane.release(record)
