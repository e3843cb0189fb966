"""Serving benchmark: batching on vs off, from a separate client process, plus the in-process ceiling.

    python bench/serve_bench.py --duration 5 --out bench/serve_results.json
    python bench/serve_bench.py --only protocols --duration 5 --rounds 5 --out bench/results/serve_bench_v2.json
    python bench/serve_bench.py --only protocols --protocols json,v2_binary,grpc_v2 --duration 5 --rounds 5 \
        --out bench/results/serve_bench_grpc.json

Starts `python -m service` (uvicorn with uvloop + httptools) in a subprocess per configuration and drives it from
this process, which never imports TensorFlow, with N concurrent keep-alive HTTP/1.1 connections over raw asyncio
streams (a lean client: it shares the cores with the server). Scenarios: single-image JSON `encode` requests and
`samples` PNG requests with a fresh seed each, at several concurrencies; a concurrency-256 overload run with a small
VAE_QUEUE_MAX; and the ceiling: the SavedModel's encode signature called directly, in a subprocess, at the mean
batch size the batcher reached. The `protocols` part compares single-image encode requests as our JSON (`/v1/encode`)
and as KServe v2 binary tensors (`/v2/models/mnist_vae/infer`, as tritonclient sends them), and, with `grpc_v2` in
--protocols, as gRPC ModelInfer with raw_input_contents (tritonclient.grpc's request) on the same server's gRPC port,
in alternating runs, at concurrency 64 and 1; each concurrency-64 run is followed at once by the ceiling at its own
mean batch and at batch 64 (a shared VM drifts within minutes). The gRPC load generator is the HTTP/1.1 one's twin:
pre-encoded HTTP/2 frames (HPACK literals, the gRPC length prefix, the serialized ModelInferRequest) over raw asyncio
streams, one connection per caller with one call in flight, answers read as frames (from what each read of the
socket brought, as the HTTP/1.1 client reads its answers) and not parsed (a call with a message is a success: this
server sends none with an error status); --grpc-client aio uses grpc.aio instead (about
four times the client CPU). Each run reports the client's own CPU seconds.
"""

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import orjson
from PIL import Image
from report import emit

try:  # the client runs on uvloop too when it is installed (it comes with uvicorn[standard])
    from uvloop import run as run_async
except ImportError:
    from asyncio import run as run_async

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "service" / "fixtures"
BATCH_SIZE = "vae_batch_size_images"  # the service's images-per-model-call histogram


# --- the client ---------------------------------------------------------------------------------------------------

async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server keeps the connection) of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    match = re.search(rb"\r\ncontent-length: *(\d+)", lower)  # not Inference-Header-Content-Length
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, body, b"connection: close" not in lower


STALL_S = 30.0  # how long after a run's end the load generators wait for answers still owed


async def gather_within(seconds: float, clients) -> bool:
    """Run the clients to the end, or cancel those still waiting after `seconds` (a server that stopped answering);
    whether any was cancelled. Their unanswered requests count as lost."""
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*clients)
    except TimeoutError:
        return True
    return False


def load_report(concurrency: int, duration: float, latencies: list[float], statuses: Counter, ok_status,
                failures: Counter, sent: int, answered: int, stalled: bool, **extra) -> dict:
    """What each load generator reports: answers with `ok_status` in the measured window (their throughput and
    latency percentiles), the other answers by status, connection failures, and calls sent but never answered."""
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    ok = statuses.get(ok_status, 0)
    return {
        "concurrency": concurrency, "duration_s": duration, "ok": ok, "throughput_rps": round(ok / duration, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": sum(n for s, n in statuses.items() if s != ok_status) + sum(failures.values()),
        "statuses": {str(s): n for s, n in sorted(statuses.items())}, "connection_failures": dict(failures),
        "sent": sent, "answered": answered, "lost": sent - answered - sum(failures.values()), "stalled": stalled,
        **extra,
    }


async def drive(host: str, port: int, make_request, concurrency: int, warmup: float, duration: float) -> dict:
    """Run `concurrency` connections for warmup + duration seconds; stats cover responses finished in the window."""
    clock = time.perf_counter  # not loop.time(): uvloop's clock has millisecond resolution
    start = clock() + warmup
    stop = start + duration
    latencies, statuses, failures = [], Counter(), Counter()
    sent = answered = 0

    async def client(index: int) -> None:
        nonlocal sent, answered
        reader = writer = None
        count = 0
        try:
            while clock() < stop:
                request = make_request(index, count)
                count += 1
                sent += 1  # a request that fails to connect counts as sent and failed, as one cut off mid-answer
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    t0 = clock()
                    writer.write(request)
                    status, _, keep = await read_response(reader)
                    answered += 1
                    t1 = clock()
                    if start <= t1 <= stop:
                        statuses[status] += 1
                        if status == 200:
                            latencies.append(t1 - t0)
                    if not keep:
                        writer.close()
                        writer = None
                except (OSError, asyncio.IncompleteReadError) as err:
                    failures[type(err).__name__] += 1
                    if writer is not None:
                        writer.close()
                    writer = None
        finally:
            if writer is not None:
                writer.close()

    stalled = await gather_within(warmup + duration + STALL_S, (client(i) for i in range(concurrency)))
    return load_report(concurrency, duration, latencies, statuses, 200, failures, sent, answered, stalled)


def post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def fixture_digits() -> list[np.ndarray]:
    digits = [np.asarray(Image.open(path), np.float32) / 255 for path in sorted(FIXTURES.glob("mnist_test_*.png"))]
    assert digits, f"no fixture digits in {FIXTURES}"
    return digits


def encode_requests() -> list[bytes]:
    """One single-image JSON encode request per MNIST fixture digit."""
    return [post("/v1/encode", orjson.dumps({"images": [d]}, option=orjson.OPT_SERIALIZE_NUMPY))
            for d in fixture_digits()]


def v2_encode_requests(model: str = "mnist_vae") -> list[bytes]:
    """One single-image KServe v2 encode request per fixture digit, with binary tensors in and out, as tritonclient's
    default request is (no Content-Type, every output binary)."""
    requests = []
    for digit in fixture_digits():
        data = digit.astype("<f4").tobytes()
        header = orjson.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28, 1], "datatype": "FP32",
                                           "parameters": {"binary_data_size": len(data)}}],
                               "parameters": {"binary_data_output": True}})
        requests.append((f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: bench\r\n"
                         f"Inference-Header-Content-Length: {len(header)}\r\n"
                         f"Content-Length: {len(header) + len(data)}\r\n\r\n").encode() + header + data)
    return requests


def grpc_encode_requests(model: str = "mnist_vae") -> list[bytes]:
    """One single-image ModelInferRequest per fixture digit, serialized, as tritonclient.grpc builds it (the tensor
    in raw_input_contents)."""
    from tritonclient.grpc import service_pb2

    requests = []
    for digit in fixture_digits():
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28, 1])
        request.raw_input_contents.append(digit.astype("<f4").tobytes())
        requests.append(request.SerializeToString())
    return requests


# A gRPC client over raw asyncio streams, the HTTP/1.1 client's twin: pre-encoded HTTP/2 frames out, frames read back
# with no parsing beyond their 9-byte headers. One connection per caller and one call in flight on it, as the
# HTTP/1.1 client keeps one request in flight per connection.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_DATA, H2_HEADERS, H2_RST_STREAM, H2_SETTINGS, H2_PING, H2_GOAWAY, H2_WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
H2_END_STREAM, H2_ACK, H2_END_HEADERS = 0x1, 0x1, 0x4
H2_MAX_WINDOW = 2**31 - 1


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def hpack_literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, new name (every length under 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class H2Caller:
    """One HTTP/2 connection making unary gRPC calls one at a time (stream 1, 3, 5, ...)."""

    def __init__(self, host: str, port: int, path: str):
        self.address = (host, port)
        self.block = b"".join(hpack_literal(name, value) for name, value in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")))
        self.reader = self.writer = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(*self.address)
        self.buffer = bytearray()
        self.stream, self.window, self.stream_window = 1, 65535, 65535
        # Our receive windows as large as HTTP/2 allows, so the server never waits for a WINDOW_UPDATE from us.
        settings = (4).to_bytes(2, "big") + H2_MAX_WINDOW.to_bytes(4, "big") + (2).to_bytes(2, "big") + bytes(4)
        self.writer.write(H2_PREFACE + h2_frame(H2_SETTINGS, 0, 0, settings)
                          + h2_frame(H2_WINDOW_UPDATE, 0, 0, (H2_MAX_WINDOW - 65535).to_bytes(4, "big")))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def call(self, message: bytes) -> bool:
        """One call: whether the answer carried a message (our server sends none with an error status)."""
        if self.writer is None:
            await self.open()
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        while self.window < len(body):  # the server's connection window (it sends WINDOW_UPDATEs as it reads)
            await self._frame(None)
        stream = self.stream
        self.stream += 2
        self.window -= len(body)
        self.writer.write(h2_frame(H2_HEADERS, H2_END_HEADERS, stream, self.block)
                          + h2_frame(H2_DATA, H2_END_STREAM, stream, body))
        got_message = False
        while True:
            kind, flags = await self._frame(stream)
            if kind == H2_DATA:
                got_message = True
            if kind in (H2_DATA, H2_HEADERS) and flags & H2_END_STREAM:
                return got_message
            if kind == H2_RST_STREAM:
                return False

    async def _frame(self, stream: int | None) -> tuple[int, int]:
        """Read one frame, answer what the connection needs (SETTINGS and PING acks, windows); (type, flags) of a
        frame on `stream`, else (-1, 0)."""
        buffer = self.buffer
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            data = await self.reader.read(65536)  # what has arrived: most answers take one read, as over HTTP/1.1
            if not data:
                raise asyncio.IncompleteReadError(bytes(buffer), None)
            buffer += data
        length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
        on = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buffer[9:9 + length])
        del buffer[:9 + length]
        if kind == H2_SETTINGS and not flags & H2_ACK:
            for i in range(0, len(payload), 6):
                if int.from_bytes(payload[i:i + 2], "big") == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                    self.stream_window = int.from_bytes(payload[i + 2:i + 6], "big")
            self.writer.write(h2_frame(H2_SETTINGS, H2_ACK, 0))
        elif kind == H2_PING and not flags & H2_ACK:
            self.writer.write(h2_frame(H2_PING, H2_ACK, 0, payload))
        elif kind == H2_WINDOW_UPDATE and on == 0:
            self.window += int.from_bytes(payload, "big") & 0x7FFFFFFF
        elif kind == H2_GOAWAY:
            raise ConnectionResetError("GOAWAY")
        return (kind, flags) if on == stream and stream is not None else (-1, 0)


async def drive_h2(host: str, port: int, make_request, concurrency: int, warmup: float, duration: float,
                   path: str = "/inference.GRPCInferenceService/ModelInfer") -> dict:
    """drive() for unary gRPC calls over raw HTTP/2 (H2Caller): `concurrency` connections, one call in flight each."""
    clock = time.perf_counter
    start = clock() + warmup
    stop = start + duration
    latencies, statuses, failures = [], Counter(), Counter()
    sent = answered = 0

    async def client(index: int) -> None:
        nonlocal sent, answered
        caller = H2Caller(host, port, path)
        count = 0
        try:
            while clock() < stop:
                try:
                    request = make_request(index, count)
                    count += 1
                    t0 = clock()
                    sent += 1
                    ok = await caller.call(request)
                    answered += 1
                    t1 = clock()
                    if start <= t1 <= stop:
                        statuses["OK" if ok else "error"] += 1
                        if ok:
                            latencies.append(t1 - t0)
                except (OSError, asyncio.IncompleteReadError) as err:
                    failures[type(err).__name__] += 1
                    caller.close()
        finally:
            caller.close()

    stalled = await gather_within(warmup + duration + STALL_S, (client(i) for i in range(concurrency)))
    return load_report(concurrency, duration, latencies, statuses, "OK", failures, sent, answered, stalled)


async def drive_grpc(host: str, port: int, make_request, concurrency: int, warmup: float, duration: float,
                     channels: int = 1) -> dict:
    """drive() for gRPC ModelInfer: `concurrency` callers, each one call at a time, over `channels` connections."""
    import grpc

    clock = time.perf_counter
    start = clock() + warmup
    stop = start + duration
    latencies, statuses, failures = [], Counter(), Counter()
    sent = answered = 0
    # Each channel its own connection (grpc shares subchannels between channels with equal arguments otherwise).
    opened = [grpc.aio.insecure_channel(f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1),
                                                                  ("grpc.max_receive_message_length", -1)])
              for _ in range(channels)]
    calls = [channel.unary_unary("/inference.GRPCInferenceService/ModelInfer") for channel in opened]

    async def client(index: int) -> None:
        nonlocal sent, answered
        call = calls[index % len(calls)]
        count = 0
        while clock() < stop:
            request = make_request(index, count)
            count += 1
            t0 = clock()
            sent += 1
            try:
                await call(request, timeout=30)
                status = "OK"
            except grpc.aio.AioRpcError as err:
                status = err.code().name
            answered += 1
            t1 = clock()
            if start <= t1 <= stop:
                statuses[status] += 1
                if status == "OK":
                    latencies.append(t1 - t0)

    try:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    finally:
        for channel in opened:
            await channel.close()
    # Each call has its timeout: none stalls.
    return load_report(concurrency, duration, latencies, statuses, "OK", failures, sent, answered, False,
                       channels=channels)


# --- the server ---------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET; TimeoutError (an OSError) if the answer takes longer than `timeout` seconds."""
    async def once() -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(get(path))
                status, body, _ = await read_response(reader)
            finally:
                writer.close()
        return status, body

    return run_async(once())


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time a process (or one of its threads) has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    port: int
    pid: int
    grpc_port: int | None = None  # KServe v2 gRPC, when started with grpc=true


@contextmanager
def serving(model_dir: str, repo: Path = REPO, extra_env: dict[str, str] | None = None, **env: str):
    """`python -m service` of the checkout `repo` in a subprocess with VAE_* overrides (and any extra_env); yields it
    once /readyz answers 200."""
    port = free_port()
    grpc_port = int(env["grpc_port"]) if str(env.get("grpc", "")).lower() == "true" and "grpc_port" in env else None
    environ = {**os.environ, **(extra_env or {}), "VAE_MODEL_DIR": model_dir, "VAE_PORT": str(port),
               "VAE_LOG_LEVEL": "warning",
               **{f"VAE_{k.upper()}": str(v) for k, v in env.items()}}
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=environ,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
            try:
                if http_get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service not ready after 120 s")
            time.sleep(0.2)
        wait_until_idle(process.pid)
        yield Server(port, process.pid, grpc_port)
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_idle(pid: int, timeout_s: float = 60.0) -> None:
    """Until the service uses under 5% of a core: it is ready once the batch sizes up to VAE_BATCH_READY_SIZE are
    warmed, and then warms the larger ones in the background, which a measurement must not overlap."""
    deadline = time.monotonic() + timeout_s
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - before < 0.025:
            return
        before = now
    print(f"warning: the service was still busy {timeout_s:g} s after ready; measuring anyway", file=sys.stderr)


def histogram_totals(port: int, name: str, signature: str) -> tuple[float, float]:
    """(sum, count) of one of the service's per-signature histograms, e.g. vae_batch_size_images."""
    text = http_get(port, "/metrics")[1].decode()
    return tuple(float(re.search(rf'{name}_{kind}{{signature="{signature}"[^}}]*}} (\S+)', text).group(1))
                 for kind in ("sum", "count"))


def drive_server(server: Server, make_request, concurrency: int, warmup: float, duration: float, grpc: bool = False,
                 grpc_client: str = "h2", grpc_channels: int = 1) -> dict:
    """One load generator's run against the server: HTTP/1.1 on its port, or gRPC on its gRPC port over raw HTTP/2
    frames (h2) or grpc.aio (aio, over `grpc_channels` connections)."""
    if grpc and grpc_client == "aio":
        return run_async(drive_grpc("127.0.0.1", server.grpc_port, make_request, concurrency, warmup, duration,
                                    grpc_channels))
    if grpc:
        return run_async(drive_h2("127.0.0.1", server.grpc_port, make_request, concurrency, warmup, duration))
    return run_async(drive("127.0.0.1", server.port, make_request, concurrency, warmup, duration))


def run_scenario(server: Server, make_request, concurrency: int, args, signature: str, grpc: bool = False) -> dict:
    before, cpu_before = histogram_totals(server.port, BATCH_SIZE, signature), cpu_seconds(server.pid)
    client_before = time.process_time()  # this process is the load generator alone
    result = drive_server(server, make_request, concurrency, args.warmup, args.duration, grpc, args.grpc_client,
                          args.grpc_channels)
    result["client_cpu_s"] = round(time.process_time() - client_before, 2)  # over the warm-up too
    after, cpu_after = histogram_totals(server.port, BATCH_SIZE, signature), cpu_seconds(server.pid)
    calls = after[1] - before[1]
    result["mean_batch_images"] = round((after[0] - before[0]) / calls, 1) if calls else None
    # over the warm-up too, so per answered request
    result["server_cpu_us_per_request"] = round((cpu_after - cpu_before) / max(result["answered"], 1) * 1e6)
    print(json.dumps(result), file=sys.stderr)
    return result


# --- the ceiling --------------------------------------------------------------------------------------------------

CEILING_CODE = """
import json, sys, time
import numpy as np, tensorflow as tf
encode = tf.saved_model.load(sys.argv[1]).signatures["encode"]
print(json.dumps({"loaded": True}), flush=True)
for line in sys.stdin:  # one measurement per line: [sizes, seconds]
    sizes, seconds = json.loads(line)
    results = {}
    for size in sizes:
        images = np.random.default_rng(0).random((size, 28, 28, 1), dtype=np.float32)
        for _ in range(3):
            encode(images=images)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            {name: t.numpy() for name, t in encode(images=images).items()}
            calls += 1
        results[size] = round(calls * size / (time.perf_counter() - start), 1)
    print(json.dumps(results), flush=True)
"""


class Ceiling:
    """The encode signature called directly (numpy in and out) in a subprocess of its own that loads the model once
    and then measures on demand, so a measurement can follow the run it is compared with within seconds. It sleeps
    (no CPU) between measurements."""

    def __init__(self, model_dir: str):
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen([sys.executable, "-c", CEILING_CODE, model_dir], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        try:
            self._answer()
        except BaseException:
            self.__exit__()
            raise

    def images_per_s(self, sizes: list[int], seconds: float) -> dict[str, float]:
        """Images per second per batch size, each measured for `seconds`."""
        try:
            self._process.stdin.write(json.dumps([sizes, seconds]) + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            self._failed()
        return self._answer()

    def _answer(self) -> dict:
        for line in self._process.stdout:  # TensorFlow may print other lines
            if line.startswith("{"):
                return json.loads(line)
        self._failed()

    def _failed(self) -> NoReturn:
        self._stderr.seek(0)
        raise RuntimeError(f"the ceiling process ended ({self._process.wait()}): "
                           f"{self._stderr.read().decode(errors='replace')[-2000:]}")

    def __enter__(self) -> "Ceiling":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._stderr.close()


# --- the protocols ------------------------------------------------------------------------------------------------

def protocols_report(args) -> dict:
    """Single-image encode as our JSON and as v2 binary tensors: alternating runs on one server (the VM drifts),
    concurrency 64 then 1. Each concurrency-64 run is followed at once by the ceiling at the mean batch that run
    reached, and its fraction of the ceiling is its throughput over that; the summary holds the medians."""
    extra = dict(item.split("=", 1) for item in args.set)
    builders = {"json": encode_requests, "v2_binary": v2_encode_requests, "grpc_v2": grpc_encode_requests}
    names = [name for name in args.protocols.split(",") if name]
    unknown = [name for name in names if name not in builders]
    if unknown:
        raise SystemExit(f"unknown --protocols {unknown}; choose from {sorted(builders)}")
    paths = {name: builders[name]() for name in names}
    if "grpc_v2" in paths:  # the gRPC front end on the same server (KServe v2 only; TF Serving's port off)
        extra = {**extra, "grpc": "true", "grpc_port": str(free_port()), "tfserving_grpc_port": "0"}
    report = {"model_dir": args.model_dir, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
              "duration_s": args.duration, "warmup_s": args.warmup, "settings": extra, "rounds": []}
    with serving(args.model_dir, **extra) as server, Ceiling(args.model_dir) as ceiling:
        for _ in range(args.rounds):
            round_ = {}
            for concurrency in (64, 1):
                for name, requests in paths.items():
                    def make(client: int, count: int, requests=requests) -> bytes:
                        return requests[(client + count) % len(requests)]
                    run = round_[f"{name}_c{concurrency}"] = run_scenario(server, make, concurrency, args, "encode",
                                                                          grpc=name.startswith("grpc"))
                    if concurrency == 64:  # the service idles meanwhile
                        size = max(1, round(run["mean_batch_images"] or 1))
                        sizes = sorted({size, 64})
                        measured = ceiling.images_per_s(sizes, max(1.0, args.duration / 2))
                        run["ceiling"] = {"batch": size, "images_per_s": measured[str(size)],
                                          "batch_64_images_per_s": measured["64"]}
                        run["fraction_of_ceiling"] = round(run["throughput_rps"] / run["ceiling"]["images_per_s"], 3)
                        run["fraction_of_ceiling_64"] = round(run["throughput_rps"] / measured["64"], 3)
                        print(json.dumps({name: run["ceiling"]}), file=sys.stderr)
            report["rounds"].append(round_)

    def median(key: str, field: str) -> float:
        return round(statistics.median(r[key][field] for r in report["rounds"]), 3)

    report["summary"] = {
        name: {"c64_throughput_rps": median(f"{name}_c64", "throughput_rps"),
               "c64_fraction_of_ceiling": median(f"{name}_c64", "fraction_of_ceiling"),
               "c64_fraction_of_ceiling_64": median(f"{name}_c64", "fraction_of_ceiling_64"),
               "c64_p50_ms": median(f"{name}_c64", "p50_ms"), "c64_p99_ms": median(f"{name}_c64", "p99_ms"),
               "c64_client_cpu_s": median(f"{name}_c64", "client_cpu_s"),
               "c64_mean_batch_images": median(f"{name}_c64", "mean_batch_images"),
               "c64_ceiling_images_per_s": round(statistics.median(r[f"{name}_c64"]["ceiling"]["images_per_s"]
                                                                   for r in report["rounds"]), 1),
               "c64_server_cpu_us_per_request": median(f"{name}_c64", "server_cpu_us_per_request"),
               "c1_p50_ms": median(f"{name}_c1", "p50_ms"),
               "errors": sum(r[f"{name}_c{c}"]["errors"] for r in report["rounds"] for c in (64, 1)),
               "lost": sum(r[f"{name}_c{c}"]["lost"] for r in report["rounds"] for c in (64, 1)),
               "stalled": any(r[f"{name}_c{c}"].get("stalled", False) for r in report["rounds"] for c in (64, 1))}
        for name in paths}
    if {"json", "v2_binary"} <= set(paths):
        report["summary"]["c1_p50_binary_minus_json_ms"] = round(
            report["summary"]["v2_binary"]["c1_p50_ms"] - report["summary"]["json"]["c1_p50_ms"], 2)
    if {"grpc_v2", "v2_binary"} <= set(paths):  # per round, so that both see the same drift
        report["summary"]["c64_grpc_over_v2_binary"] = round(statistics.median(
            r["grpc_v2_c64"]["throughput_rps"] / r["v2_binary_c64"]["throughput_rps"] for r in report["rounds"]), 3)
    return report


# --- the run ------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=os.environ.get("VAE_MODEL_DIR", str(REPO / "models/mnist_vae/1")))
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each scenario")
    parser.add_argument("--concurrency", default="1,8,64,256", help="encode concurrencies")
    parser.add_argument("--samples-concurrency", default="1,8,64", help="samples concurrencies ('' to skip)")
    parser.add_argument("--samples-n", type=int, default=16, help="digits per samples request")
    parser.add_argument("--overload-queue-max", type=int, default=16, help="VAE_QUEUE_MAX of the overload run")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="service setting for all runs: --set tf_intra_op_threads=1 sets VAE_TF_INTRA_OP_THREADS")
    parser.add_argument("--only", choices=["all", "protocols"], default="all",
                        help="'protocols': only the JSON vs KServe v2 binary comparison")
    parser.add_argument("--rounds", type=int, default=3, help="alternating JSON/v2 rounds of the protocols part")
    parser.add_argument("--protocols", default="json,v2_binary",
                        help="the protocols part's request kinds, alternated: json, v2_binary, grpc_v2")
    parser.add_argument("--grpc-client", choices=["h2", "aio"], default="h2",
                        help="grpc_v2's load generator: raw HTTP/2 frames over asyncio streams, one connection per "
                        "caller (h2: the HTTP/1.1 generator's twin in kind and cost), or grpc.aio (aio)")
    parser.add_argument("--grpc-channels", type=int, default=1,
                        help="with --grpc-client aio: the connections its calls are spread over")
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    args = parser.parse_args()
    if args.only == "protocols":
        report = protocols_report(args)
        emit(report, args.out)
        return
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    samples_concurrencies = [int(c) for c in args.samples_concurrency.split(",") if c]
    extra = dict(item.split("=", 1) for item in args.set)

    encodes = encode_requests()

    def encode_request(client: int, count: int) -> bytes:
        return encodes[(client + count) % len(encodes)]

    def samples_request(client: int, count: int) -> bytes:
        return get(f"/v1/samples?n={args.samples_n}&seed={random.getrandbits(62)}&format=png")

    report = {"model_dir": args.model_dir, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
              "duration_s": args.duration, "warmup_s": args.warmup, "settings": extra, "encode": {}, "samples": {}}
    for mode, batch_max_size in (("batching_on", 256), ("batching_off", 1)):
        with serving(args.model_dir, **extra, batch_max_size=batch_max_size) as server:
            report["encode"][mode] = [run_scenario(server, encode_request, c, args, "encode") for c in concurrencies]
            report["samples"][mode] = [run_scenario(server, samples_request, c, args, "sample")
                                       for c in samples_concurrencies]

    with serving(args.model_dir, **extra, queue_max=args.overload_queue_max) as server:
        overload = run_scenario(server, encode_request, 256, args, "encode")
        overload["queue_max"] = args.overload_queue_max
        overload["ready_after"] = http_get(server.port, "/readyz")[0]
        overload["encode_after"] = run_async(drive("127.0.0.1", server.port, encode_request, 1, 0, 0.5))["statuses"]
    report["overload"] = overload

    reached = sorted({max(1, round(r["mean_batch_images"] or 1)) for r in report["encode"]["batching_on"]})
    with Ceiling(args.model_dir) as ceiling:
        report["ceiling_images_per_s"] = ceiling.images_per_s(reached, max(1.0, args.duration / 2))

    on = {r["concurrency"]: r for r in report["encode"]["batching_on"]}
    off = {r["concurrency"]: r for r in report["encode"]["batching_off"]}
    summary = {}
    for c in concurrencies:
        size = str(max(1, round(on[c]["mean_batch_images"] or 1)))
        summary[f"c{c}"] = {
            "speedup_on_vs_off": round(on[c]["throughput_rps"] / max(off[c]["throughput_rps"], 1e-9), 2),
            "fraction_of_ceiling": round(on[c]["throughput_rps"] / report["ceiling_images_per_s"][size], 3),
            "p50_on_minus_off_ms": round(on[c]["p50_ms"] - off[c]["p50_ms"], 2),
        }
    report["summary"] = summary
    emit(report, args.out)


if __name__ == "__main__":
    main()
