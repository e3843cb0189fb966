"""The ASGI middleware that counts and times requests into the app's Metrics."""

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.serving.metrics import Metrics

CLIENT_GONE = "vae.client_gone"  # scope key set by RequestGuard: the client left before its answer


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
