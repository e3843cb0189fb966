"""Slow, stalled, vanishing and failing requests over real sockets against a real uvicorn (the config `python -m
service` runs): timeouts, the connection cap, disconnects, unexpected errors, request IDs.

Two servers of the same app: `quick` with 0.3 s header, body and keep-alive timeouts for the tests that wait for
one, `server` with the default timeouts for the others (an idle connection there stays open while a test needs it).
No fixed sleeps: waits are for a condition (connections accepted, a handler running, a metric counted)."""

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import pytest
from fastapi import Request

CAPPED = {"max_connections": 6}
TIMEOUT_S = 0.3  # the quick server's header, body and keep-alive timeouts
QUICK = CAPPED | {"header_timeout_s": TIMEOUT_S, "body_timeout_s": TIMEOUT_S, "keep_alive_s": TIMEOUT_S}
STARTED = threading.Event()  # set by /test/slow when it starts waiting
CANCELLED = threading.Event()  # set by /test/slow when a client disconnect cancels it


def add_test_routes(app) -> None:
    async def boom(request: Request):
        await request.body()
        raise RuntimeError("a bug")

    async def slow(request: Request):
        STARTED.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            CANCELLED.set()
            raise
        return {"slept": True}

    async def read(request: Request):  # stands for a standard-protocol route (their errors are {"error": ...})
        return {"bytes": len(await request.body())}

    app.router.add_api_route("/test/boom", boom, methods=["POST"])
    app.router.add_api_route("/v2/test/read", read, methods=["POST"])
    app.router.add_api_route("/test/slow", slow, methods=["GET"])


@pytest.fixture(scope="module")
def server(live_server):
    return live_server(add_test_routes, **CAPPED)


@pytest.fixture(scope="module")
def quick(live_server):
    return live_server(add_test_routes, **QUICK)


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def wait_for(condition, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def open_connections(server) -> set:
    """The server's open connections (uvicorn's protocol instances), copied."""
    return set(server.server.server_state.connections)


def accepted(server, sockets: list[socket.socket]) -> bool:
    """Whether the server has accepted every one of these connections."""
    ports = {connection.client[1] for connection in open_connections(server) if connection.client}
    return {sock.getsockname()[1] for sock in sockets} <= ports


def handler_running(server, path: str) -> bool:
    """Whether a request for `path` has reached RequestGuard (its handler task is running)."""
    from service.http.middleware import HANDLER

    return any(connection.cycle is not None and connection.cycle.scope["path"] == path
               and connection.cycle.scope.get(HANDLER) is not None for connection in open_connections(server))


def counted(server, series: str) -> None:
    """Waits until /metrics shows `series`."""
    wait_for(lambda: series in httpx.get(f"{server.url}/metrics").text, series)


def closed_cleanly(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes the connection (EOF, not a reset) within `within_s` seconds."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


# The header timer starts when the server accepts the connection: the time is taken before connecting.

def test_connection_without_request_closed_after_header_timeout(quick):
    start = time.monotonic()
    with connect(quick) as sock:
        assert closed_cleanly(sock, 5)
        assert 0.2 < time.monotonic() - start < 3


def test_partial_headers_closed_after_header_timeout(quick):
    start = time.monotonic()
    with connect(quick) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_cleanly(sock, 5)
        assert 0.2 < time.monotonic() - start < 3


def test_idle_keep_alive_closed_after_keep_alive_timeout(quick):
    with connect(quick) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        start = time.monotonic()
        assert closed_cleanly(sock, 5)
        assert time.monotonic() - start < 3


@pytest.mark.parametrize("path,key", [("/v1/encode", "detail"), ("/v2/test/read", "error")])
def test_short_body_gets_408_and_connection_closed(quick, path, key):
    with connect(quick) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n{\"images\": ".encode())
        status, headers, body = read_response(sock)
        assert status == 408
        assert headers["connection"] == "close"
        assert f"did not arrive within {TIMEOUT_S:g} s" in json.loads(body)[key]
        assert closed_cleanly(sock, 2)


def test_declared_body_over_limit_is_413_before_reading_it(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert json.loads(body) == {"error": "request body is 999999999 bytes, the limit is 8388608"}


def test_connections_over_cap_get_503_and_others_keep_working(server):
    sockets = [connect(server) for _ in range(8)]  # 8 open connections, over the cap of 6
    try:
        wait_for(lambda: accepted(server, sockets), "the server to accept the 8 connections")
        with httpx.Client() as client:
            response = client.get(f"{server.url}/v1/model")
            probe = client.get(f"{server.url}/healthz")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1" and response.headers["connection"] == "close"
        assert "over its limit of 6" in response.json()["detail"]
        # Probes are answered beyond the cap: an overloaded replica must not look dead to its liveness probe.
        assert probe.status_code == 200
    finally:
        for sock in sockets:
            sock.close()
    # Under the cap again once the server has seen them close: answered, not refused.
    wait_for(lambda: httpx.get(f"{server.url}/v1/model").status_code == 200, "/v1/model to answer 200")
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_unexpected_error_is_json_500_and_clean_close(server, caplog):
    with connect(server) as sock:
        sock.sendall(b"POST /test/boom HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (500, "close")
        assert json.loads(body)["detail"].startswith("internal error")
        assert closed_cleanly(sock, 2)  # EOF, no reset
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unhandled error on POST /test/boom" in errors[0].getMessage()
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_disconnect_cancels_handler_counts_499_and_logs_one_line(server, caplog):
    STARTED.clear()
    CANCELLED.clear()
    caplog.set_level(logging.INFO)
    with connect(server) as sock:
        sock.sendall(b"GET /test/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert STARTED.wait(10), "the handler did not start"
    assert CANCELLED.wait(5), "the handler's await was not cancelled"
    # RequestGuard logs the disconnect before MetricsMiddleware around it counts the 499
    counted(server, 'vae_http_requests_total{method="GET",protocol="other",route="/test/slow",status="499"} 1.0')
    lines = [record for record in caplog.records if "/test/slow" in record.getMessage()]
    assert [record.getMessage() for record in lines] == ["client disconnected from GET /test/slow"]
    assert lines[0].levelno == logging.INFO


def test_upload_abandoned_mid_body_counts_499(server, caplog):
    caplog.set_level(logging.INFO)
    with connect(server) as sock:
        sock.sendall(b"POST /v1/reconstruct HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000\r\n\r\n{\"images\": [")
        wait_for(lambda: handler_running(server, "/v1/reconstruct"), "the request to reach its handler")
    counted(server, 'route="/v1/reconstruct",status="499"} 1.0')
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_request_id_echoed_or_generated(server):
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
        generated = client.get("/healthz", headers={"x-request-id": "no spaces\tor tabs"}).headers["x-request-id"]
        assert len(generated) == 16 and generated != client.get("/healthz").headers["x-request-id"]
        error = client.post("/v1/encode", content=b"x", headers={"x-request-id": "r-1", "content-type": "text/plain"})
        assert error.status_code == 415 and error.headers["x-request-id"] == "r-1"


def test_request_id_in_log_lines(server, caplog):
    from service.http.logs import RequestIdFilter

    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    try:
        httpx.post(f"{server.url}/test/boom", content=b"{}", headers={"x-request-id": "trace-me-42"})
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    lines = [record for record in caplog.records
             if "/test/boom" in record.getMessage() and record.name.startswith(("service", "uvicorn"))]
    assert lines and all(record.request_id == "trace-me-42" for record in lines)
