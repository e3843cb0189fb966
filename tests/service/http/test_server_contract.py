"""The server edge extends uvicorn's httptools protocol: what it relies on, checked over real sockets. Pipelined
requests, a body in several chunks and a close in the same event-loop turn as the answer."""

import socket

import pytest

from service.http import server


@pytest.fixture(scope="module")
def edge(live_server):
    return live_server()


def exchange(port: int, payload: bytes, answers: int = 1, chunks: int = 1) -> bytes:
    """Send `payload` (in `chunks` writes) and read until `answers` responses have begun (or the server closes;
    answers=0: close right after sending)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        step = max(1, len(payload) // chunks)
        for start in range(0, len(payload), step):
            sock.sendall(payload[start:start + step])
        data = b""
        while answers and (data.count(b"HTTP/1.1 ") < answers or not data.endswith(b"}")):
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data


def test_versions_are_the_ones_the_subclass_was_written_for():
    server.check_server_versions()  # raises with a one-line reason otherwise


def test_pipelined_requests_are_answered_in_order(edge):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    data = exchange(edge.port, request, answers=2)
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
    assert data.index(b'{"status":"ok"}') < data.index(b'{"status":"ready"}')


def test_a_body_in_several_chunks_is_read_whole(edge):
    body = b'{"latents": [[' + b", ".join([b"0.0"] * 16) + b"]]}"
    request = (b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = exchange(edge.port, request, chunks=7)
    assert data.startswith(b"HTTP/1.1 200 OK"), data[:200]


def test_a_client_that_closes_right_after_pipelining_leaves_the_server_serving(edge):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20
    for _ in range(5):
        exchange(edge.port, request, answers=0)
    data = exchange(edge.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK"), data[:200]
