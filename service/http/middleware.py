"""RequestGuard: what every request gets around its route, whatever its protocol.

- a request ID (X-Request-ID: the client's if sane, else a new one) on the response and in every log line about it;
- the cap on open connections (503), the body size (413) and the body time (408) limits, answered in the path's
  protocol's error shape with `Connection: close`;
- client disconnects: the handler's await is cancelled (work not started yet is dropped: the batcher skips cancelled
  futures), one log line, no response; MetricsMiddleware counts them as 499. The connection's protocol
  (service.http.server) cancels the handler when the connection is lost: no task per request to watch for it;
- any other error: one log line with its traceback and a well-formed JSON 500 with `Connection: close`. Starlette's
  ServerErrorMiddleware would answer too, but then re-raise, and uvicorn would close the socket under the client's
  next request on it."""

import asyncio
import logging
import random
import re
from collections.abc import Callable

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import contract
from service.http.auth import ApiKeyAuth, load_api_keys
from service.http.errors import RequestFailed, failed_response
from service.http.logs import RequestIdFilter, request_id  # noqa: F401 (RequestIdFilter: re-exported)
from service.http.metrics import CLIENT_GONE, MetricsMiddleware
from service.serving.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
OPEN_CONNECTIONS = "vae.open_connections"  # scope["extensions"] key set by service.http.server' protocol
# scope keys shared with service.http.server' protocol: the task answering the request (cancelled if the client leaves),
# and whether the whole body has arrived (then reading it cannot stall: no body timer)
HANDLER = "vae.handler"
BODY_RECEIVED = "vae.body_received"


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float, max_connections: int,
                 retry_after_s: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        request_id.set(rid)  # this request's task has its own context: the value ends with it
        scope[HANDLER] = asyncio.current_task()
        exchange = _Exchange(scope, receive, send, rid, self)
        try:
            try:
                self._check_limits(scope)
                await self.app(scope, exchange.receive, exchange.send)
            except RequestFailed as failed:
                log.info("%d on %s %s: %s", failed.status_code, scope["method"], scope["path"], failed.detail)
                await exchange.answer(failed)
            except ClientDisconnect:
                raise
            except Exception:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                await exchange.answer(RequestFailed(500, "internal error; the X-Request-ID header names it in the log"))
        except (ClientDisconnect, asyncio.CancelledError):  # also while an error answer was being sent
            if not (exchange.disconnected or scope.get(CLIENT_GONE)):
                raise  # a server shutdown, not the client
            if (task := asyncio.current_task()).cancelling():
                task.uncancel()
            log.info("client disconnected from %s %s", scope["method"], scope["path"])
        finally:
            scope.pop(HANDLER, None)
            if exchange.disconnected:
                scope[CLIENT_GONE] = True

    def _check_limits(self, scope: Scope) -> None:
        connections = scope.get("extensions", {}).get(OPEN_CONNECTIONS)
        # Probes are answered beyond the cap: an overloaded replica is not a dead one (a failing liveness probe would
        # restart it, and lose every connection it holds).
        if connections is not None and connections > self.max_connections and scope["path"] not in PROBE_PATHS:
            raise RequestFailed(503, f"the server has {connections} open connections, over its limit of "
                                     f"{self.max_connections}; retry later", {"Retry-After": str(self.retry_after_s)})
        for name, value in scope["headers"]:
            if name == b"content-length" and contract.is_count(value.decode("latin-1")) \
                    and int(value) > self.max_body_bytes:
                raise RequestFailed(413, f"request body is {int(value)} bytes, the limit is {self.max_body_bytes}")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _SANE_ID.fullmatch(value):
            return value.decode("ascii")
    # Unique, not secret: the Mersenne Twister (seeded from os.urandom at start) costs no system call per request.
    return f"{random.getrandbits(64):016x}"


class _Exchange:
    """One request's receive and send, wrapped: body deadline and size, response tracking."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, rid: str, guard: RequestGuard):
        self.scope, self._receive, self._send = scope, receive, send
        self._rid_header = (b"x-request-id", rid.encode("ascii"))
        self._guard = guard
        self._deadline = asyncio.get_running_loop().time() + guard.body_timeout_s
        self._received = 0
        self.disconnected = self.started = self._body_read = self._answered = False

    async def receive(self) -> Message:
        if self._body_read or self.scope.get(BODY_RECEIVED):
            message = await self._receive()  # the buffered body at once; after it, only the end of the exchange
        else:
            try:
                async with asyncio.timeout_at(self._deadline):
                    message = await self._receive()
            except TimeoutError:
                raise RequestFailed(408, f"the request body did not arrive within {self._guard.body_timeout_s:g} s "
                                         f"(VAE_BODY_TIMEOUT_S)") from None
        if message["type"] == "http.disconnect":
            self.disconnected = not self._answered  # after the answer it is the end of the exchange, not the client
        elif message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._guard.max_body_bytes:
                raise RequestFailed(413, f"request body is over the limit of {self._guard.max_body_bytes} bytes")
            self._body_read = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            message = {**message, "headers": [*message.get("headers", ()), self._rid_header]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self._answered = True
        await self._send(message)

    async def answer(self, failed: RequestFailed) -> None:
        if self.started:  # too late for a status: uvicorn closes the connection when the app returns
            log.error("could not answer %d: the response had started", failed.status_code)
            return
        await failed_response(self.scope["path"], failed)(self.scope, self.receive, self.send)


def install_middleware(app: FastAPI, settings: Settings, metrics: Metrics, open_paths: frozenset[str],
                       protocol_of: Callable[[str], str]) -> None:
    """Outermost first: metrics (so they count every answer, 401s and 503s included; `protocol_of` names a route's
    protocol), the guard, access control (every path but `open_paths`)."""
    keys = load_api_keys(settings)
    if keys:
        app.add_middleware(ApiKeyAuth, keys=keys, open_paths=open_paths)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s,
                       max_connections=settings.max_connections, retry_after_s=settings.retry_after_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics, protocol_of=protocol_of)
