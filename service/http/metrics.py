"""The ASGI middleware that counts and times requests into the app's Metrics."""

import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.serving.metrics import Metrics

CLIENT_GONE = "vae.client_gone"  # scope key set by RequestGuard: the client left before its answer
UNMATCHED = "unmatched"  # the route label of a request no route matched


class _Series:
    """One (protocol, method, route)'s latency child and its request counters by status. prometheus_client's labels()
    validates and locks on every call (about 4 us each): the children are made once and kept."""

    __slots__ = ("latency", "_labels", "_counter", "_by_status")

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]):
        self.latency = metrics.latency.labels(*labels)
        self._labels, self._counter, self._by_status = labels, metrics.requests, {}

    def count(self, status: int) -> None:
        if (counter := self._by_status.get(status)) is None:
            counter = self._by_status[status] = self._counter.labels(*self._labels, str(status))
        counter.inc()


class MetricsMiddleware:
    """Counts requests by protocol, method, route template (not raw path, to bound label cardinality) and status, and
    times them. A client that went away before its answer counts as 499 (nginx's "client closed request").

    `protocol_of(path)`: the `protocol` label of a route template (or of an unmatched request's path), asked once per
    route and method, not per request; the values are the gRPC metrics' for the same protocols."""

    def __init__(self, app: ASGIApp, metrics: Metrics,
                 protocol_of: Callable[[str], str] = lambda path: "other") -> None:
        self.app = app
        self.metrics = metrics
        self.protocol_of = protocol_of
        # Keyed by (the route's id, method: routes compare by value and are not hashable; they live as long as the app),
        # or (protocol, method) for unmatched requests. Bounded as the labels are: routes, the methods httptools
        # parses, protocols.
        self._series: dict[tuple[Any, str], _Series] = {}

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
            route, method = scope.get("route"), scope["method"]
            key = (id(route) if route is not None else self.protocol_of(scope["path"]), method)
            if (series := self._series.get(key)) is None:
                series = self._series[key] = self._new_series(route, method, scope["path"])
            series.latency.observe(time.perf_counter() - start)
            series.count(status)

    def _new_series(self, route: Any, method: str, path: str) -> _Series:
        template = getattr(route, "path", None) if route is not None else None
        if template is None:  # no route matched (or one without a path template)
            return _Series(self.metrics, (self.protocol_of(path), method, UNMATCHED))
        return _Series(self.metrics, (self.protocol_of(template), method, template))
