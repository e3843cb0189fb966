"""Connection limits uvicorn applies (keep-alive timeout) and the two it lacks, added to its httptools protocol.

uvicorn 0.54 arms its keep-alive timer only after a response: a connection that sends nothing, or part of its
headers, is kept forever. GuardedHttpToolsProtocol closes it after VAE_HEADER_TIMEOUT_S, and tells RequestGuard how
many connections are open, so that requests beyond VAE_MAX_CONNECTIONS get a 503 in their protocol's error shape
(uvicorn's own limit_concurrency answers plain text and also counts in-flight requests, not connections).

It also tells RequestGuard when a request's whole body has arrived (no body timer needed to read it), and cancels the
request's handler when the connection is lost before the answer: a client that left (499), whose work not yet
started is dropped. A task per request waiting for the disconnect would cost ~20 us per request."""

import asyncio
import importlib.metadata
import logging
import socket

import prometheus_client
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.metrics import CLIENT_GONE
from service.http.middleware import BODY_RECEIVED, HANDLER, OPEN_CONNECTIONS
from service.serving.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
# GuardedHttpToolsProtocol overrides HttpToolsProtocol's parser callbacks and reads its `cycle`, `scope`,
# `connections`, `transport` and `client`: attributes of these releases (pinned exactly in pyproject.toml), checked
# at start and by tests/service/http/test_server_contract.py over real sockets.
WRITTEN_FOR = {"uvicorn": "0.54.0", "httptools": "0.9.0"}


def check_server_versions() -> None:
    """A one-line start-up fault if uvicorn or httptools is not the release the protocol subclass was written for."""
    for name, expected in WRITTEN_FOR.items():
        found = importlib.metadata.version(name)
        if found != expected:
            raise RuntimeError(f"{name} {found} is installed; service/http/server.py extends {name} {expected}'s "
                               f"HTTP protocol (install {name}=={expected}, or check the subclass against {found})")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers (set on the class by
    `uvicorn_config`)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    _in_headers = False  # a request has begun and its headers are not complete yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _HeadWithBody(transport, self.loop)  # type: ignore[assignment]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Armed only when the bytes so far end inside a request's headers: headers that arrive whole (nearly all)
        # cost no timer.
        if self._in_headers:
            self._arm_header_timer()

    def on_message_begin(self) -> None:  # the first byte of a request, also the next one on a kept-alive connection
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        self.scope.setdefault("extensions", {})[OPEN_CONNECTIONS] = len(self.connections)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.scope[BODY_RECEIVED] = True
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            handler = cycle.scope.get(HANDLER)
            if handler is not None and not handler.done():
                cycle.scope[CLIENT_GONE] = True
                handler.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug("closed a connection from %s: no complete request headers within %g s (VAE_HEADER_TIMEOUT_S)",
                     _address(self.client), self.header_timeout_s)
            self.transport.close()


class _HeadWithBody:
    """The connection's transport, sending a response's head with its body: uvicorn writes the head when the response
    starts and the body right after, two system calls and two packets per response. The head waits for the next write
    (one writev with it) or, if none comes in this event-loop turn, goes alone at the next one."""

    __slots__ = ("_transport", "_loop", "_head")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop, self._head = transport, loop, None

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():  # the client left (a pipelining client may close after its first answer)
            self._head = None
            return
        if self._head is None:
            self._head = data
            self._loop.call_soon(self._flush)
        else:
            head, self._head = self._head, None
            self._transport.writelines((head, data))

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():  # the client may have reset the connection in the same turn
                self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def bind_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now so that a port in use fails the start before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT sockets
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_metrics(settings: Settings, metrics: Metrics) -> None:
    """Prometheus metrics on their own port (VAE_METRICS_PORT), as Triton serves them: no API key there, so a
    scraper needs none (keep the port inside the cluster); /metrics on the API port stays behind the key. A thread of
    prometheus_client's own HTTP server."""
    prometheus_client.start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)


def uvicorn_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """The uvicorn Config `python -m service` runs (tests start in-process servers with it too)."""
    check_server_versions()
    protocol = type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                    {"header_timeout_s": settings.header_timeout_s})
    options = dict(host=settings.host, port=settings.port, loop="uvloop", http=protocol,
                   timeout_keep_alive=settings.keep_alive_s, log_level=settings.log_level,
                   access_log=settings.access_log)
    return uvicorn.Config(app, **(options | overrides))
