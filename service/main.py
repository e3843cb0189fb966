"""Builds the FastAPI app; the model is loaded in the lifespan handler, not at import."""

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.batching import Batchers, bucket_sizes
from service.deps import Serving
from service.errors import install_error_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.model import configure_device, load_model
from service.routes import inference, ops, scoring
from service.settings import Settings

log = logging.getLogger(__name__)


async def _become_ready(app: FastAPI, serving: Serving, on_failure: Callable[[], None] | None) -> None:
    """Call every signature at every batch size the batchers pad to, then start serving."""
    settings = serving.settings
    try:
        await asyncio.to_thread(serving.model.warm_up, bucket_sizes(settings.batch_max_size))
    except Exception as err:
        # /healthz answers 503 from now on (a liveness probe restarts the container), and on_failure may end the
        # process (`python -m service` does, so a restart policy restarts it).
        app.state.failure = f"warm-up failed: {type(err).__name__}: {err}"
        log.exception("warm-up failed: /healthz answers 503")
        if on_failure is not None:
            on_failure()
        raise
    # TensorFlow leaves ~350k long-lived Python objects: a full collection walks them all in 0.2-0.5 s, stalling
    # every request in flight. Freezing them takes them out of the collector's sight. Requests make almost no
    # reference cycles, yet at the default threshold (700) young collections took about 10 us per request at
    # concurrency 64, 4% of the event loop's time.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000)
    for batcher in serving.batchers.all():
        batcher.start()
    app.state.serving, app.state.ready = serving, True
    log.info("ready: batching up to %d images, %.1f ms delay, queue %d", settings.batch_max_size,
             settings.batch_max_delay_ms, settings.queue_max)


def create_app(settings: Settings | None = None, on_failure: Callable[[], None] | None = None) -> FastAPI:
    """on_failure: called if the warm-up fails, after /healthz starts answering 503."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = configure_device(settings.gpu_memory_growth, settings.tf_intra_op_threads)
        # The model thread needs the GIL a few times per call, and a busy event loop keeps it for up to the switch
        # interval each time. With Python's 5 ms default, concurrency 64 gave 4,606 req/s against 4,758 (model calls
        # 6.1 ms against 5.9; `python bench/serve_ab.py --rounds 3 . '.:VAE_GIL_SWITCH_INTERVAL_MS=5'`). It mattered
        # far more (about 20%) while batches were handed to the model thread by the event loop.
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
        # Loading (and the metadata check) happens before the port opens, so a bad model fails the start at once.
        model = await asyncio.to_thread(load_model, settings.model_dir, device)
        batchers = Batchers.for_model(model, max_size=settings.batch_max_size,
                                      max_delay_s=settings.batch_max_delay_ms / 1000, queue_max=settings.queue_max,
                                      metrics=metrics)
        # The warm-up (seconds) runs with the port open: /healthz answers, /readyz and the model routes say 503.
        warm_up = asyncio.create_task(_become_ready(app, Serving(model, batchers, settings), on_failure))
        yield
        app.state.ready = False
        warm_up.cancel()
        await asyncio.gather(warm_up, return_exceptions=True)
        await asyncio.gather(*(batcher.stop() for batcher in batchers.all()))

    # The routers' routes are handed over as they are: include_router would put a resolution layer in front of
    # them that costs ~20 us per request, about 8% of the event loop's time per encode request under load.
    app = FastAPI(title="MNIST VAE", summary="Encode, decode, sample and reconstruct MNIST digits with a VAE.",
                  version="1", lifespan=lifespan,
                  routes=[*inference.router.routes, *scoring.router.routes, *ops.router.routes])
    app.state.settings, app.state.metrics = settings, metrics
    app.state.serving, app.state.ready, app.state.failure = None, False, None
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app, settings.retry_after_s)
    return app
