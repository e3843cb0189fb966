"""Abuse benchmark: `python -m service` in a subprocess, attacked three ways; prints JSON (and writes --out).

1. heavy uploads: for every accepted format (multipart) and for JSON arrays, six concurrent worst-case requests
   (each file at the pixel limit; a JPEG far over it, accepted through its draft decode; the JSON body at the size
   limit), while /readyz is polled: RSS growth over the idle server and /readyz's worst latency.
2. slow clients: N connections that trickle their headers a byte a second, while a well-behaved client encodes
   digits: its success rate and latency, and how soon the server closed the slow connections.
3. overload: 256 concurrent clients against a small queue (VAE_QUEUE_MAX): only 200 and 503 + Retry-After, every
   request answered, RSS bounded.

    python bench/abuse.py --out bench/results/abuse.json
"""

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from report import emit

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
MAX_BODY = 8 * 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
                               cwd=REPO_ROOT, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server not ready")


def worst_image(format: str) -> bytes:
    """The costliest accepted file of a format: 4 MP (the pixel limit) with the widest pixel mode it saves, or for
    JPEG 36 MP, which its 1/8 draft decode brings under the limit."""
    side = 6000 if format == "JPEG" else 2000
    y, x = np.mgrid[0:side, 0:side]
    gray = ((x + y) % 256).astype(np.uint8)
    # BMP is uncompressed: at 8 MB a body holds one 4 MP image in 8-bit gray, not in RGB.
    mode = {"PNG": "RGBA", "TIFF": "RGBA", "WEBP": "RGBA", "GIF": "P", "BMP": "L", "JPEG": "RGB"}[format]
    image = Image.fromarray(gray).convert(mode)
    buffer = io.BytesIO()
    options = {"JPEG": {"quality": 95}, "TIFF": {"compression": "tiff_deflate"}}.get(format, {})
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def multipart_files(format: str, per_request: int) -> list:
    data = worst_image(format)
    count = max(1, min(per_request, (MAX_BODY - 4096) // (len(data) + 256)))
    return [("files", (f"w{i}.{format.lower()}", data, "application/octet-stream")) for i in range(count)]


def json_body() -> bytes:
    """256 images (the most a request may hold) of long decimals, about the body size limit."""
    rng = np.random.default_rng(0)
    digits = max(4, min(17, (MAX_BODY - 8192) // (256 * 784) - 2))
    images = np.round(rng.random((256, 28, 28)), digits - 2)
    body = json.dumps({"images": images.tolist()}).encode()
    return body[:MAX_BODY] if len(body) <= MAX_BODY else json.dumps({"images": np.round(images, 6).tolist()}).encode()


async def heavy_uploads(url: str, pid: int, per_request: int) -> dict:
    kinds = {f"multipart {format}": ("files", multipart_files(format, per_request)) for format in FORMATS}
    kinds["json arrays"] = ("json", json_body())
    results = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for name, (kind, payload) in kinds.items():
            results[name] = await six_uploads(client, url, pid, kind, payload)
    return results


async def six_uploads(client: httpx.AsyncClient, url: str, pid: int, kind: str, payload) -> dict:
    base = rss_mb(pid)
    peak, worst_ready, statuses = base, 0.0, []
    stop = asyncio.Event()

    async def poll() -> None:
        nonlocal peak, worst_ready
        async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
            while not stop.is_set():
                start = time.perf_counter()
                assert (await probe.get("/readyz")).status_code == 200
                worst_ready = max(worst_ready, time.perf_counter() - start)
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.05)

    async def upload() -> None:
        try:
            if kind == "files":
                response = await client.post("/v1/encode", files=payload)
            else:
                response = await client.post("/v1/encode", content=payload,
                                             headers={"content-type": "application/json"})
            statuses.append(response.status_code)
        except httpx.HTTPError as err:
            statuses.append(type(err).__name__)

    poller = asyncio.create_task(poll())
    start = time.perf_counter()
    await asyncio.gather(*(upload() for _ in range(6)))
    elapsed = time.perf_counter() - start
    stop.set()
    await poller
    body = sum(len(f[1][1]) for f in payload) if kind == "files" else len(payload)
    return {"files_per_request": len(payload) if kind == "files" else 256, "body_mb": round(body / 2**20, 2),
            "statuses": dict(Counter(statuses)), "seconds": round(elapsed, 2), "rss_before_mb": round(base),
            "rss_growth_mb": round(peak - base), "readyz_worst_ms": round(worst_ready * 1000, 1)}


async def slow_clients(url: str, connections: int, duration_s: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    writers, closed_at = [], []
    start = time.perf_counter()

    async def attacker() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return
        writers.append(writer)
        try:
            for byte in b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                if await _closed(reader, 1.0):
                    closed_at.append(time.perf_counter() - start)
                    return
        except OSError:
            closed_at.append(time.perf_counter() - start)

    attackers = [asyncio.create_task(attacker()) for _ in range(connections)]
    await asyncio.sleep(1)
    latencies, statuses = [], Counter()
    body = json.dumps({"images": [[[0.0] * 28] * 28]})
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.perf_counter() - start < duration_s:
            t = time.perf_counter()
            try:
                response = await client.post("/v1/encode", content=body, headers={"content-type": "application/json"})
                statuses[response.status_code] += 1
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.05)
    for task in attackers:
        task.cancel()
    await asyncio.gather(*attackers, return_exceptions=True)
    for writer in writers:
        writer.close()
    ms = np.array(latencies) * 1000
    return {"slow_connections": connections, "opened": len(writers), "closed_by_server": len(closed_at),
            "closed_after_s_median": round(float(np.median(closed_at)), 1) if closed_at else None,
            "good_client": {"requests": len(latencies), "statuses": {str(k): v for k, v in statuses.items()},
                            "p50_ms": round(float(np.percentile(ms, 50)), 1),
                            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}}


async def _closed(reader: asyncio.StreamReader, wait_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), wait_s) == b""
    except TimeoutError:
        return False


async def overload(url: str, pid: int, concurrency: int, duration_s: float) -> dict:
    body = json.dumps({"images": [[[0.5] * 28] * 28] * 4})
    statuses, missing_retry_after, sent, errors = Counter(), 0, 0, Counter()
    base, peak = rss_mb(pid), rss_mb(pid)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        end = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal sent, missing_retry_after
            while time.perf_counter() < end:
                sent += 1
                try:
                    response = await client.post("/v1/encode", content=body,
                                                 headers={"content-type": "application/json"})
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    missing_retry_after += "retry-after" not in response.headers
                    await asyncio.sleep(0.01)

        async def watch_rss() -> None:
            nonlocal peak
            while time.perf_counter() < end:
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.2)

        await asyncio.gather(watch_rss(), *(worker() for _ in range(concurrency)))
    answered = sum(statuses.values())
    return {"concurrency": concurrency, "seconds": duration_s, "sent": sent, "answered": answered,
            "statuses": {str(k): v for k, v in statuses.items()}, "transport_errors": dict(errors),
            "503_without_retry_after": missing_retry_after, "rss_before_mb": round(base),
            "rss_peak_mb": round(peak), "rss_after_mb": round(rss_mb(pid))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files-per-request", type=int, default=8, help="worst-case files per multipart request")
    parser.add_argument("--slow-connections", type=int, default=500)
    parser.add_argument("--slow-seconds", type=float, default=14, help="attack length (header timeout: 10 s)")
    parser.add_argument("--overload-seconds", type=float, default=8)
    parser.add_argument("--queue-max", type=int, default=16, help="VAE_QUEUE_MAX for the whole run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    process, url = start_server({"VAE_QUEUE_MAX": str(args.queue_max)})
    try:
        results = {"server": {"queue_max": args.queue_max, "defaults": "every other setting at its default",
                              "rss_idle_mb": round(rss_mb(process.pid))}}
        results["heavy_uploads"] = asyncio.run(heavy_uploads(url, process.pid, args.files_per_request))
        uploads = results["heavy_uploads"].values()
        results["heavy_uploads_summary"] = {"rss_growth_mb_max": max(r["rss_growth_mb"] for r in uploads),
                                            "readyz_worst_ms": max(r["readyz_worst_ms"] for r in uploads)}
        results["slow_clients"] = asyncio.run(slow_clients(url, args.slow_connections, args.slow_seconds))
        results["overload"] = asyncio.run(overload(url, process.pid, 256, args.overload_seconds))
        results["alive_after"] = httpx.get(f"{url}/readyz").status_code == 200
    finally:
        process.terminate()
        process.wait(30)
    emit(results, args.out)


if __name__ == "__main__":
    main()
