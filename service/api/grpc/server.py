"""The gRPC edge both gRPC protocols share: `grpc.aio` servers on the HTTP server's event loop, their channel options
(message sizes, keepalive enforcement, concurrent streams, connections, connection age), optional TLS, the health
and reflection services, and `Edge.handler`, which wraps every RPC handler with what the HTTP edge gives a request:
a request ID, the API key check, the call's deadline as the request's deadline, the protocol's status table, one log
line per refusal and the request metrics."""

import asyncio
import logging
import random
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from service.http.auth import bearer_key_valid, load_api_keys
from service.http.logs import request_id
from service.serving.dataplane import DataPlane
from service.serving.errors import (
    DeadlineExceededError,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    ServingError,
    Unsupported,
)
from service.serving.metrics import LATENCY_BUCKETS, Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

StatusTable = dict[type[ServingError], grpc.StatusCode]
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
READY_POLL_S = 0.25  # how often the health service's Watch streams see readiness change


class GrpcMetrics:
    """vae_grpc_requests_total / vae_grpc_request_duration_seconds, in the app's registry beside (and in the style of)
    vae_http_requests_total / vae_http_request_duration_seconds: protocol, method (the RPC's name) and the status
    code's name. Children are kept, as MetricsMiddleware keeps its own (labels() costs microseconds). One per app's
    Metrics (of_app), so a second start of the same app reuses them."""

    _of_app: "weakref.WeakKeyDictionary[Metrics, GrpcMetrics]" = weakref.WeakKeyDictionary()

    @classmethod
    def of_app(cls, metrics: Metrics) -> "GrpcMetrics":
        if (found := cls._of_app.get(metrics)) is None:
            found = cls._of_app[metrics] = cls(metrics)
        return found

    def __init__(self, metrics: Metrics):
        labels = {"registry": metrics.registry}
        self.requests = Counter("vae_grpc_requests_total", "gRPC requests by protocol, method and status code.",
                                ["protocol", "method", "code"], **labels)
        self.latency = Histogram("vae_grpc_request_duration_seconds", "gRPC request latency.",
                                 ["protocol", "method"], buckets=LATENCY_BUCKETS, **labels)
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}

    def observe(self, protocol: str, method: str, code: str, seconds: float) -> None:
        if (latency := self._latency.get((protocol, method))) is None:
            latency = self._latency[protocol, method] = self.latency.labels(protocol, method)
        latency.observe(seconds)
        if (requests := self._requests.get((protocol, method, code))) is None:
            requests = self._requests[protocol, method, code] = self.requests.labels(protocol, method, code)
        requests.inc()


class Garbage:
    """A request whose bytes are not the method's message: the handler answers INVALID_ARGUMENT (grpc's own
    deserialization failure would be INTERNAL)."""

    def __init__(self, message_name: str, error: Exception):
        self.problem = f"the request is not a valid {message_name} message: {error or type(error).__name__}"


def _tolerant(message_class) -> Callable[[bytes], Any]:
    def deserialize(data: bytes):
        try:
            return message_class.FromString(data)
        except (protobuf_message.DecodeError, ValueError, RuntimeError) as err:
            return Garbage(message_class.DESCRIPTOR.full_name, err)

    return deserialize


# The serving layer's errors as both gRPC front ends answer them, with the codes TF Serving and Triton use: NOT_FOUND
# for a model or version they do not have, INVALID_ARGUMENT for bad tensors, UNAVAILABLE while nothing is loaded or
# the queue is full. A per-request limit (LimitExceeded, an InvalidInput) is INVALID_ARGUMENT: the same request never
# succeeds, so it must not be retried (clients retry RESOURCE_EXHAUSTED, which grpc itself answers for a message over
# VAE_GRPC_MAX_MESSAGE_BYTES).
GRPC_STATUS = {InvalidInput: grpc.StatusCode.INVALID_ARGUMENT, NotFound: grpc.StatusCode.NOT_FOUND,
               Unsupported: grpc.StatusCode.INVALID_ARGUMENT, NotReady: grpc.StatusCode.UNAVAILABLE,
               Overloaded: grpc.StatusCode.UNAVAILABLE, DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
               ServingError: grpc.StatusCode.INTERNAL}


class Refused(Exception):
    """An answer with a status code decided by the edge or a codec outside the status table (UNAUTHENTICATED,
    UNIMPLEMENTED)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Edge:
    """What every RPC of one protocol goes through. `status`: the protocol's table of the serving layer's errors."""

    protocol: str
    status: StatusTable
    dataplane: DataPlane
    metrics: GrpcMetrics
    keys: list[bytes]
    open_methods: frozenset[str] = frozenset()
    _codes: dict[type, grpc.StatusCode] = field(default_factory=dict)

    def code_of(self, error: ServingError) -> grpc.StatusCode:
        kind = type(error)
        code = self._codes.get(kind)
        if code is None:
            code = self._codes[kind] = next(self.status[cls] for cls in kind.__mro__ if cls in self.status)
        return code

    def handler(self, method: str, fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
        protocol, metrics, needs_key = self.protocol, self.metrics, bool(self.keys) and method not in self.open_methods

        async def handle(request, context: grpc.aio.ServicerContext):
            start = time.perf_counter()
            code = "OK"
            metadata = context.invocation_metadata() or ()
            rid = _request_id(metadata)
            request_id.set(rid)  # each RPC runs in a task of its own: the value ends with it
            trailers = (("x-request-id", rid),)
            try:
                failure = None
                try:
                    if needs_key:
                        self._check_key(metadata)
                    if isinstance(request, Garbage):
                        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, request.problem)
                    remaining = context.time_remaining()
                    if remaining is None:
                        response = await fn(request, context)
                    else:  # the call's deadline is the request's: its work is dropped from the queue when it passes
                        async with asyncio.timeout(remaining):
                            response = await fn(request, context)
                except ServingError as err:
                    failure = (self.code_of(err), err.message)
                except Refused as err:
                    failure = (err.code, err.message)
                except TimeoutError:
                    failure = (grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it was answered")
                if failure is None:
                    context.set_trailing_metadata(trailers)
                    return response
                code = failure[0].name
                log.info("%s on %s %s: %s", code, protocol, method, failure[1])
                await context.abort(failure[0], failure[1], trailers)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away, or the server is stopping
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("unhandled error on %s %s", protocol, method)
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"internal error; the log names it by the request ID {rid}", trailers)
            finally:
                metrics.observe(protocol, method, code, time.perf_counter() - start)

        return handle

    def _check_key(self, metadata) -> None:
        for key, value in metadata:
            if key == "authorization":
                if bearer_key_valid(value.encode() if isinstance(value, str) else value, self.keys):
                    return
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid: send the metadata "
                                                               "authorization: Bearer <key>")
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "this method needs an API key: send the metadata "
                                                       "authorization: Bearer <key>")

    def generic_handler(self, service: ServiceDescriptor, handlers: dict[str, Callable]) -> grpc.GenericRpcHandler:
        """The service's methods: `handlers` (unary-unary, by method name) wrapped by handler(), the others answered
        UNIMPLEMENTED. Requests are parsed tolerantly (see Garbage)."""
        methods = {}
        for method in service.methods:
            request_class, response_class = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
            fn = handlers.get(method.name)
            if fn is None:
                fn = _unimplemented(service.full_name, method.name)
            else:
                fn = self.handler(method.name, fn)
            make = {(False, False): grpc.unary_unary_rpc_method_handler,
                    (False, True): grpc.unary_stream_rpc_method_handler,
                    (True, False): grpc.stream_unary_rpc_method_handler,
                    (True, True): grpc.stream_stream_rpc_method_handler}[method.client_streaming,
                                                                          method.server_streaming]
            methods[method.name] = make(fn, request_deserializer=_tolerant(request_class),
                                        response_serializer=response_class.SerializeToString)
        return grpc.method_handlers_generic_handler(service.full_name, methods)


def _unimplemented(service: str, method: str):
    async def unimplemented(request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{service}/{method} is not implemented by this server")

    return unimplemented


def _request_id(metadata) -> str:
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str) and _SANE_ID.fullmatch(value):
            return value
    return f"{random.getrandbits(64):016x}"


# -- servers


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    age_ms = int(settings.grpc_max_connection_age_s * 1000)
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        # Connections are closed (GOAWAY, then the grace for calls in flight) at this age, with a 10% jitter that
        # grpc adds, so that long-lived client channels reconnect and spread over the replicas behind a Service.
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", int(settings.grpc_max_connection_age_grace_s * 1000)),
        # Keepalive enforcement: clients may ping (also between calls) at most this often; more earns strikes and,
        # after two, a GOAWAY (ENHANCE_YOUR_CALM).
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.grpc_keepalive_min_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
        # The server's own keepalive pings find dead peers (a client gone without a FIN).
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Without this, a second process binding the same port would silently share it (SO_REUSEPORT) and take half
        # of its calls: a port in use must fail the start instead.
        ("grpc.so_reuseport", 0),
    ]


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.grpc_tls_cert_file is None:
        return None
    try:
        chain, key = settings.grpc_tls_cert_file.read_bytes(), settings.grpc_tls_key_file.read_bytes()
    except OSError as err:
        raise GrpcStartError(f"{err.filename}: cannot read the gRPC TLS file: {err.strerror}") from None
    return grpc.ssl_server_credentials([(key, chain)])


class GrpcStartError(RuntimeError):
    """A gRPC server could not start (port in use, TLS files, a missing package): the message says which."""


class Health(health.aio.HealthServicer):
    """grpc.health.v1: SERVING for the server ("") and each inference service only while the data plane is ready."""

    def __init__(self, dataplane: DataPlane, services: Iterable[str]):
        super().__init__()
        self.dataplane = dataplane
        self.services = ("", *services)
        self.ready: bool | None = None

    async def sync(self) -> None:
        ready = self.dataplane.ready
        if ready != self.ready:
            self.ready = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in self.services:
                await self.set(service, status)

    async def Check(self, request, context):
        await self.sync()
        return await super().Check(request, context)

    async def follow(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(READY_POLL_S)


@dataclass
class Protocol:
    """One gRPC front end: its name (metrics, logs), port, and how to add its services to a server (returns their
    full names, for health and reflection)."""

    name: str
    port: int
    add: Callable[[grpc.aio.Server, Edge], list[str]]
    status: StatusTable
    open_methods: frozenset[str] = frozenset()


class GrpcServers:
    """The gRPC servers of one app: started and stopped by its lifespan, on its event loop."""

    def __init__(self, servers: list[tuple[str, grpc.aio.Server, int]], health_services: list[Health],
                 follow: asyncio.Task | None):
        self.servers = servers
        self.health = health_services
        self._follow = follow

    @property
    def ports(self) -> dict[str, int]:
        """Protocol name -> bound port."""
        return {name: port for name, _, port in self.servers}

    @classmethod
    async def start(cls, settings: Settings, dataplane: DataPlane, metrics: Metrics,
                    protocols: list[Protocol]) -> "GrpcServers":
        keys = load_api_keys(settings)
        grpc_metrics = GrpcMetrics.of_app(metrics)
        credentials = _credentials(settings)
        host = settings.grpc_host or settings.host
        started, healths = [], []
        try:
            for protocol in protocols:
                if not protocol.port:
                    continue
                server = grpc.aio.server(options=channel_options(settings))
                edge = Edge(protocol.name, protocol.status, dataplane, grpc_metrics, keys, protocol.open_methods)
                services = protocol.add(server, edge)
                healthy = Health(dataplane, services)
                health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
                reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
                address = f"{host}:{protocol.port}"
                try:
                    port = (server.add_secure_port(address, credentials) if credentials is not None
                            else server.add_insecure_port(address))
                except RuntimeError as err:
                    raise GrpcStartError(f"cannot listen on {address} ({protocol.name} gRPC): {err}") from None
                await server.start()
                await healthy.sync()
                started.append((protocol.name, server, port))
                healths.append(healthy)
                log.info("%s gRPC on %s:%d (%s)", protocol.name, host, port, "TLS" if credentials else "plaintext")
        except BaseException:
            await asyncio.gather(*(server.stop(None) for _, server, _ in started))
            raise
        follow = asyncio.create_task(_follow_all(healths)) if healths else None
        return cls(started, healths, follow)

    async def stop(self, grace_s: float) -> None:
        """Drain: health says NOT_SERVING, new calls are refused, calls in flight get `grace_s` to finish."""
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
        for healthy in self.health:
            await healthy.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace_s) for _, server, _ in self.servers))


async def _follow_all(healths: list[Health]) -> None:
    await asyncio.gather(*(healthy.follow() for healthy in healths))
