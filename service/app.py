"""Builds the FastAPI app; the model is loaded in the lifespan handler, not at import."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.api import grpc as grpc_servers
from service.api.kserve_v2 import routes as v2
from service.api.ops import routes as ops
from service.api.playground import routes as playground
from service.api.tfserving import routes as tfserving
from service.api.v1 import errors as v1_errors
from service.api.v1 import inference, scoring
from service.http.auth import OPEN_PATHS
from service.http.errors import install_error_handlers
from service.http.middleware import install_middleware
from service.http.routing import add_routes
from service.http.versions import VersionHeaderMiddleware
from service.process import ProcessTuning
from service.serving.dataplane import DataPlane
from service.serving.metrics import Metrics
from service.serving.model import configure_device
from service.serving.registry import Registry
from service.settings import Settings

log = logging.getLogger(__name__)


OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})
DOCS_ASSETS = "/static-offline-docs/"  # the docs page's scripts and styles, served by a mounted app (no route)


def protocol_of(path: str) -> str:
    """The `protocol` label of the HTTP request metrics for a route template (or an unmatched request's path): the
    protocols' names as the gRPC metrics give them (kserve_v2, tfserving), v1 for our own API, then ops, playground,
    docs; anything else (an unmatched path outside them) is other. The metrics middleware asks once per route."""
    if v2.belongs(path):
        return v2.PROTOCOL
    if tfserving.belongs(path):  # TF Serving's model status route (api/ops) too
        return tfserving.PROTOCOL
    if path.startswith("/v1/"):
        return "v1"
    if path in OPS_PATHS:
        return "ops"
    if path in playground.PAGE_PATHS:
        return "playground"
    return "docs" if path in DOCS_PATHS or path.startswith(DOCS_ASSETS) else "other"


def create_app(settings: Settings | None = None, on_failure: Callable[[], None] | None = None,
               tuning: ProcessTuning | None = None) -> FastAPI:
    """on_failure: called if no version can be served at start (after /healthz starts answering 503). tuning: the
    process's garbage-collector hooks (`python -m service` installs them; None: Python's defaults)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = configure_device(settings.gpu_memory_growth, settings.tf_intra_op_threads)
        # Loading (and the contract check) happens before the port opens, so a model that cannot be served fails the
        # start at once; an empty base path waits, not ready.
        await registry.start(device)
        # The warm-up (seconds) runs with the port open: /healthz answers, /readyz and the model routes say 503. Then
        # the registry follows the base path.
        follow = asyncio.create_task(registry.run(on_failure))
        # The gRPC front ends (VAE_GRPC) on this event loop, over the same data plane and batchers.
        try:
            app.state.grpc = await grpc_servers.start(settings, app.state.dataplane, metrics, app.version)
        except BaseException:
            follow.cancel()
            raise
        yield
        if app.state.grpc is not None:  # drain: new calls refused, calls in flight get VAE_GRPC_DRAIN_S
            await app.state.grpc.stop(settings.grpc_drain_s)
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await registry.stop()
        if (decoder := getattr(app.state, "upload_decoder", None)) is not None:  # the upload decode workers
            decoder.close()

    # FastAPIOffline: /docs loads Swagger UI from the package, not a CDN (no ReDoc: its page loads a logo from one).
    telemetry = {key: settings.opentelemetry for key in ("tracing", "metrics", "logs")}
    app = FastAPIOffline(title="MNIST VAE", summary="Encode, decode, sample and reconstruct MNIST digits with a VAE.",
                         version="1", lifespan=lifespan, redoc_url=None, telemetry=telemetry)
    # The hot protocol routes (see add_routes), each router's busiest route declared first: /v1/encode, then v2 infer
    # after the four /v1 model routes (each turned away by comparing its path), then TF Serving's predict.
    for router in (inference.router, v2.router, tfserving.router):
        add_routes(app, router)
    for router in (scoring.router, ops.router):
        app.include_router(router)
    if settings.playground:
        app.include_router(playground.router)
    app.state.settings, app.state.metrics = settings, metrics
    hooks = {"after_load": tuning.after_load, "after_unload": tuning.after_unload} if tuning else {}
    registry = Registry(settings, metrics, **hooks)
    app.state.dataplane = DataPlane(registry)
    app.add_middleware(VersionHeaderMiddleware)  # innermost: ends the request's version lease when it answers
    open_paths = OPEN_PATHS | (playground.PAGE_PATHS if settings.playground else frozenset())
    install_middleware(app, settings, metrics, open_paths, protocol_of)
    install_error_handlers(app, settings.retry_after_s, [(v2.belongs, v2.STATUS), (tfserving.belongs, tfserving.STATUS),
                                                         (lambda path: True, v1_errors.STATUS)])
    return app
