"""Prometheus metrics (one registry per app) and the ASGI middleware that counts and times requests."""

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CLIENT_GONE = "vae.client_gone"  # scope key set by RequestGuard: the client left before its answer


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        self.requests = Counter("vae_http_requests_total", "HTTP requests by route and status.",
                                ["method", "route", "status"], **labels)
        self.latency = Histogram("vae_http_request_duration_seconds", "HTTP request latency.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, **labels)
        # Model metrics carry the model version that served (several are loaded during a rollout).
        model = ["signature", "version"]
        self.inference = Histogram("vae_model_inference_seconds", "Model call time per batch.",
                                   model, buckets=LATENCY_BUCKETS, **labels)
        self.batch_size = Histogram("vae_batch_size_images", "Images per model call.",
                                    model, buckets=BATCH_BUCKETS, **labels)
        self.queue_wait = Histogram("vae_batch_queue_wait_seconds", "Time a request waits in the queue.",
                                    model, buckets=LATENCY_BUCKETS, **labels)
        self.queue_depth = Gauge("vae_batch_queue_depth", "Requests waiting in the queue.", model, **labels)
        self.rejected = Counter("vae_batch_rejected_total", "Requests turned away with 503 because the queue was full.",
                                model, **labels)
        self.expired = Counter("vae_batch_expired_total", "Requests answered 504: queued longer than the deadline.",
                               model, **labels)
        self.load_failures = Counter("vae_model_load_failures_total", "Model versions refused: load, contract check "
                                     "or warm-up failed.", ["version"], **labels)


class MetricsMiddleware:
    """Counts requests by route template (not raw path, to bound label cardinality) and status, and times them.
    A client that went away before its answer counts as 499 (nginx's "client closed request")."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # prometheus_client's labels() validates and locks on every call (about 4 us each); the children are kept
        # here instead. Bounded as the metrics are: route templates, the methods httptools parses, statuses.
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            if scope.get(CLIENT_GONE):
                status = 499
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            method = scope["method"]
            if (latency := self._latency.get((method, path))) is None:
                latency = self._latency[method, path] = self.metrics.latency.labels(method, path)
            latency.observe(time.perf_counter() - start)
            key = (method, path, status)
            if (requests := self._requests.get(key)) is None:
                requests = self._requests[key] = self.metrics.requests.labels(method, path, str(status))
            requests.inc()
