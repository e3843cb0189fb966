"""Connection limits uvicorn applies (keep-alive timeout) and the two it lacks, added to its httptools protocol.

uvicorn 0.54 arms its keep-alive timer only after a response: a connection that sends nothing, or part of its
headers, is kept forever. GuardedHttpToolsProtocol closes it after VAE_HEADER_TIMEOUT_S, and tells RequestGuard how
many connections are open, so that requests beyond VAE_MAX_CONNECTIONS get a 503 in their protocol's error shape
(uvicorn's own limit_concurrency answers plain text and also counts in-flight requests, not connections)."""

import asyncio
import logging

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.middleware import OPEN_CONNECTIONS
from service.settings import Settings

log = logging.getLogger(__name__)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers (set on the class by
    `uvicorn_config`)."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:  # the first byte of a request, also the next one on a kept-alive connection
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self.scope.setdefault("extensions", {})[OPEN_CONNECTIONS] = len(self.connections)
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
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


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def uvicorn_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """The uvicorn Config `python -m service` runs (tests start in-process servers with it too)."""
    protocol = type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                    {"header_timeout_s": settings.header_timeout_s})
    options = dict(host=settings.host, port=settings.port, loop="uvloop", http=protocol,
                   timeout_keep_alive=settings.keep_alive_s, log_level=settings.log_level,
                   access_log=settings.access_log)
    return uvicorn.Config(app, **(options | overrides))
