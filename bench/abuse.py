"""Abuse benchmark: `python -m service` in a subprocess, attacked five ways; prints JSON (and writes --out).

Sections 6 and 7 (json, score): JSON bodies one parser reads and another cannot write back (lone surrogates,
integers beyond 64 bits, NaN, deep nesting, deep or non-string v2 ids, UTF-16) to every JSON protocol, each a 4xx;
and 32 concurrent score requests at VAE_MAX_POSTERIOR_SAMPLES over /v1, KServe v2 and TF Serving while another
client asks for a one-image score (answered, or refused at once with 503).

1. heavy uploads: for every accepted format (multipart) and for JSON arrays, six (--heavy-concurrency) concurrent
   worst-case requests (each file at the pixel limit; a JPEG far over it, accepted through its draft decode; the
   JSON body at the size limit), while /readyz is polled: RSS growth over the idle server and /readyz's worst
   latency.
2. slow clients: N connections that trickle their headers a byte a second, while a well-behaved client encodes
   digits: its success rate and latency, and how soon the server closed the slow connections.
3. overload: 256 concurrent clients against a small queue (VAE_QUEUE_MAX): only 200 and 503 + Retry-After, every
   request answered, RSS bounded.
4. hostile decoding: for every class of tests/service/fixtures/hostile.py (progressive and multi-scan JPEGs that
   declare huge frames or thousands of scans, TIFFs with a huge tile or strip or many pages, RLE BMPs, GIF, WebP and
   APNG animations of many frames), 16 concurrent requests of such files: statuses, seconds, RSS growth, /readyz.
5. fairness: 16 concurrent requests of 256 of the costliest files within every bound (hostile.WORST_ACCEPTED, with
   normalize=false so no file is refused), while a 28x28 PNG is uploaded every 0.2 s: its worst wait (latency over
   the idle median), /readyz's worst latency, RSS growth; then the 16 clients leave, and the CPU the service spends
   in the next 2 s says whether their decoding stopped.

RSS is the whole process tree's (the service and its decode workers), summed; growth is over the idle server after
one upload (which starts the workers).

    python bench/abuse.py --out bench/results/abuse.json
    python bench/abuse.py --only hostile,fairness          # the decoding sections alone (about 3 minutes)
    python bench/abuse.py --only fairness --repo ../old    # the same against another checkout, for a before/after
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
sys.path.insert(0, str(REPO_ROOT))
from tests.service.fixtures import hostile  # noqa: E402

SECTIONS = ("heavy", "slow", "overload", "hostile", "fairness", "json", "score")
MODEL = "mnist_vae"
_VALID_V2_INPUT = ('{"name": "images", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": ['
                   + ",".join(["0"] * 784) + "]}")
# JSON that one parser accepts and another cannot write back, or that cannot be echoed: each must be a 4xx.
JSON_CASES = {
    "lone_surrogate": b'{"instances": [[[["\\ud800"]]]]}'.replace(b"\\\\", b"\\"),
    "integer_beyond_64_bits": b'{"instances": [[[[1' + b"0" * 30 + b"]]]]}",
    "nan_literal": b'{"instances": [NaN]}',
    "infinity_literal": b'{"instances": [[[[Infinity]]]]}',
    "nesting_2000_deep": b"[" * 2000 + b"]" * 2000,
    "nesting_300_deep": b'{"instances": ' + b"[" * 300 + b"0.5" + b"]" * 300 + b"}",
    "utf16_body": '{"instances": [[[[0.5]]]]}'.encode("utf-16"),
    "v2_id_300_deep": ('{"id": ' + "[" * 300 + "]" * 300 + ', "inputs": [' + _VALID_V2_INPUT + "]}").encode(),
    "v2_id_not_a_string": ('{"id": {"a": 1}, "inputs": [' + _VALID_V2_INPUT + "]}").encode(),
}
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
MAX_BODY = 8 * 1024 * 1024


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants (the decode workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def rss_mb(pid: int) -> float:
    """Resident memory of the whole process tree, MB."""
    total = 0
    for member in tree_pids(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_s(pid: int) -> float:
    """CPU time (user + system) used so far by the whole process tree."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for member in tree_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], repo: Path = REPO_ROOT) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
                               cwd=repo, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
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


async def heavy_uploads(url: str, pid: int, per_request: int, concurrency: int = 6) -> dict:
    kinds = {f"multipart {format}": ("files", multipart_files(format, per_request)) for format in FORMATS}
    kinds["json arrays"] = ("json", json_body())
    results = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for name, (kind, payload) in kinds.items():
            results[name] = await concurrent_uploads(client, url, pid, kind, payload, concurrency)
    return results


async def concurrent_uploads(client: httpx.AsyncClient, url: str, pid: int, kind: str, payload,
                             concurrency: int) -> dict:
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
    await asyncio.gather(*(upload() for _ in range(concurrency)))
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

PROBE = hostile.png_small()


async def poll_readyz(url: str, pid: int, stop: asyncio.Event, into: dict) -> None:
    """/readyz every 50 ms until `stop`: its worst latency and the tree's peak RSS go into `into`."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
        while not stop.is_set():
            start = time.perf_counter()
            status = (await probe.get("/readyz")).status_code
            into["readyz_worst_s"] = max(into.get("readyz_worst_s", 0.0), time.perf_counter() - start)
            into["readyz_not_200"] = into.get("readyz_not_200", 0) + (status != 200)
            into["rss_peak_mb"] = max(into.get("rss_peak_mb", 0.0), rss_mb(pid))
            await asyncio.sleep(0.05)


async def upload(client: httpx.AsyncClient, files: list, params: dict | None = None) -> int | str:
    try:
        return (await client.post("/v1/encode", files=files, params=params)).status_code
    except httpx.HTTPError as err:
        return type(err).__name__


async def probe_latencies(url: str, idle: int = 30) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        latencies = []
        for _ in range(idle):
            start = time.perf_counter()
            assert await upload(client, [("files", ("probe.png", PROBE, "image/png"))]) == 200
            latencies.append(time.perf_counter() - start)
        return latencies


async def hostile_classes(url: str, pid: int, concurrency: int, per_request: int) -> dict:
    """For each hostile class, `concurrency` concurrent requests of up to `per_request` such files."""
    results = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for name, (make, refused) in hostile.CORPUS.items():
            data = make()
            count = max(1, min(per_request, (MAX_BODY - 4096) // (len(data) + 256)))
            files = [("files", (f"{name}-{i}", data, "application/octet-stream")) for i in range(count)]
            base, seen, stop = rss_mb(pid), {}, asyncio.Event()
            poller = asyncio.create_task(poll_readyz(url, pid, stop, seen))
            start = time.perf_counter()
            statuses = await asyncio.gather(*(upload(client, files) for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
            stop.set()
            await poller
            results[name] = {"file_bytes": len(data), "files_per_request": count, "expected": "4xx" if refused else
                             "200 (or 4xx: no digit)", "statuses": dict(Counter(map(str, statuses))),
                             "seconds": round(elapsed, 2), "rss_growth_mb": round(seen["rss_peak_mb"] - base),
                             "readyz_worst_ms": round(seen["readyz_worst_s"] * 1000, 1)}
    return results


async def fairness(url: str, pid: int, concurrency: int, seconds: float) -> dict:
    """The worst requests within every bound, and a small upload sent meanwhile (see the module docstring)."""
    idle = sorted(await probe_latencies(url))
    idle_median = idle[len(idle) // 2]
    results = {"idle_28x28_upload_ms": {"p50": round(idle_median * 1000, 2),
                                        "max": round(idle[-1] * 1000, 2), "uploads": len(idle)}}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        many, latencies = [("files", (f"d{i}.png", PROBE, "image/png")) for i in range(256)], []
        for _ in range(5):
            start = time.perf_counter()
            assert await upload(client, many) == 200
            latencies.append(time.perf_counter() - start)
    results["idle_256_files_of_28x28_ms"] = {"median": round(float(np.median(latencies)) * 1000, 1),
                                             "max": round(max(latencies) * 1000, 1), "requests": len(latencies)}
    limits = httpx.Limits(max_connections=concurrency + 4)
    for name, make in hostile.WORST_ACCEPTED.items():
        data = make()
        files = [("files", (f"{name}-{i}", data, "application/octet-stream")) for i in range(256)]
        base, seen, stop = rss_mb(pid), {}, asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            attackers = [asyncio.create_task(upload(client, files, {"normalize": "false", "invert": "false"}))
                         for _ in range(concurrency)]
            poller = asyncio.create_task(poll_readyz(url, pid, stop, seen))
            latencies, statuses = [], Counter()
            end = time.perf_counter() + seconds
            async with httpx.AsyncClient(base_url=url, timeout=60) as prober:
                await asyncio.sleep(1)  # the attack under way
                while time.perf_counter() < end:
                    start = time.perf_counter()
                    statuses[str(await upload(prober, [("files", ("probe.png", PROBE, "image/png"))]))] += 1
                    latencies.append(time.perf_counter() - start)
                    await asyncio.sleep(0.2)
            finished = sum(task.done() for task in attackers)
            for task in attackers:  # the attackers' clients leave
                task.cancel()
            await asyncio.gather(*attackers, return_exceptions=True)
        await asyncio.sleep(0.5)
        cpu_before = cpu_s(pid)
        await asyncio.sleep(2)
        cpu_after_leave = cpu_s(pid) - cpu_before
        stop.set()
        await poller
        results[name] = {
            "attack": f"{concurrency} requests x 256 files of {len(data)} bytes, normalize=false&invert=false",
            "attack_requests_finished_in_time": finished, "probe_uploads": len(latencies),
            "probe_statuses": dict(statuses),
            "small_upload_wait_worst_ms": round((max(latencies) - idle_median) * 1000, 1),
            "small_upload_ms_each": [round(x * 1000) for x in latencies],
            "small_upload_ms": {"p50": round(float(np.median(latencies)) * 1000, 1),
                                "max": round(max(latencies) * 1000, 1)},
            "readyz_worst_ms": round(seen["readyz_worst_s"] * 1000, 1), "readyz_not_200": seen["readyz_not_200"],
            "rss_growth_mb": round(seen["rss_peak_mb"] - base),
            "cpu_s_in_2s_after_clients_left": round(cpu_after_leave, 2)}
    return results


async def json_bodies(url: str) -> dict:
    """Every JSON case to TF Serving's :predict, KServe v2's infer and /v1/encode: the statuses seen (4xx wanted)."""
    paths = {"tfserving": f"/v1/models/{MODEL}:predict", "kserve_v2": f"/v2/models/{MODEL}/infer",
             "v1": "/v1/encode"}
    results = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for name, body in JSON_CASES.items():
            results[name] = {}
            for protocol, path in paths.items():
                response = await client.post(path, content=body, headers={"content-type": "application/json"})
                results[name][protocol] = response.status_code
    statuses = [status for run in results.values() for status in run.values()]
    return {"cases": results, "all_4xx": all(400 <= status < 500 for status in statuses)}


async def capped_scores(url: str, pid: int, concurrency: int, k: int = 256, images: int = 64) -> dict:
    """`concurrency` score requests at the cap (k x images = VAE_MAX_POSTERIOR_SAMPLES by default) over /v1, KServe
    v2 and TF Serving at once, and a one-image score from another client meanwhile: statuses (200 or 503), RSS
    growth, and how long the small request took and what it got."""
    pixels = np.random.default_rng(0).random((images, 28, 28), np.float32).round(3).tolist()
    seeds = list(range(images))
    bodies = {
        "v1": ("/v1/score", {"k": k}, {"images": pixels}),
        "kserve_v2": (f"/v2/models/{MODEL}-score/infer", None, {"inputs": [
            {"name": "images", "datatype": "FP32", "shape": [images, 28, 28, 1], "data": np.ravel(pixels).tolist()},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [k]},
            {"name": "seeds", "datatype": "INT64", "shape": [images], "data": seeds}]}),
        "tfserving": (f"/v1/models/{MODEL}:predict", None, {"signature_name": "score", "inputs": {
            "images": np.asarray(pixels)[..., None].tolist(), "k": k, "seeds": seeds}}),
    }
    base, seen, stop = rss_mb(pid), {}, asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one(protocol: str) -> str:
            path, params, body = bodies[protocol]
            try:
                return str((await client.post(path, params=params, json=body)).status_code)
            except httpx.HTTPError as err:
                return type(err).__name__

        poller = asyncio.create_task(poll_readyz(url, pid, stop, seen))
        protocols = [list(bodies)[i % 3] for i in range(concurrency)]
        started = time.perf_counter()
        capped = [asyncio.create_task(one(protocol)) for protocol in protocols]
        await asyncio.sleep(1)  # the capped requests queued
        small_start = time.perf_counter()
        small = await client.post("/v1/score", params={"k": 32}, json={"images": pixels[:1]})
        small_s = time.perf_counter() - small_start
        statuses = await asyncio.gather(*capped)
        elapsed = time.perf_counter() - started
        stop.set()
        await poller
    by_protocol = {protocol: dict(Counter(s for p, s in zip(protocols, statuses, strict=True) if p == protocol))
                   for protocol in bodies}
    return {"requests": f"{concurrency} x {images} images x k={k}", "statuses": by_protocol,
            "seconds": round(elapsed, 1), "rss_growth_mb": round(seen["rss_peak_mb"] - base),
            "readyz_worst_ms": round(seen["readyz_worst_s"] * 1000, 1),
            "small_score": {"status": small.status_code, "seconds": round(small_s, 2),
                            "retry_after": small.headers.get("retry-after")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files-per-request", type=int, default=8, help="worst-case files per multipart request")
    parser.add_argument("--heavy-concurrency", type=int, default=6, help="concurrent heavy upload requests")
    parser.add_argument("--slow-connections", type=int, default=500)
    parser.add_argument("--slow-seconds", type=float, default=14, help="attack length (header timeout: 10 s)")
    parser.add_argument("--overload-seconds", type=float, default=8)
    parser.add_argument("--queue-max", type=int, default=16, help="VAE_QUEUE_MAX for the whole run")
    parser.add_argument("--hostile-concurrency", type=int, default=16, help="concurrent requests per hostile class")
    parser.add_argument("--hostile-files", type=int, default=64, help="most files per hostile request")
    parser.add_argument("--fair-seconds", type=float, default=15, help="how long the small uploads are probed")
    parser.add_argument("--score-concurrency", type=int, default=32, help="concurrent capped score requests")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout whose service to run (before/after)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    only = set(args.only.split(","))
    assert only <= set(SECTIONS), f"unknown sections {only - set(SECTIONS)}"
    process, url = start_server({"VAE_QUEUE_MAX": str(args.queue_max)}, args.repo)
    try:
        asyncio.run(probe_latencies(url, idle=3))  # the first upload starts the decode workers
        results = {"server": {"queue_max": args.queue_max, "defaults": "every other setting at its default",
                              "repo": str(args.repo), "rss_idle_mb": round(rss_mb(process.pid)),
                              "processes": len(tree_pids(process.pid))}}
        if "heavy" in only:
            results["heavy_uploads"] = asyncio.run(heavy_uploads(url, process.pid, args.files_per_request,
                                                                 args.heavy_concurrency))
            uploads = results["heavy_uploads"].values()
            results["heavy_uploads_summary"] = {"rss_growth_mb_max": max(r["rss_growth_mb"] for r in uploads),
                                                "readyz_worst_ms": max(r["readyz_worst_ms"] for r in uploads)}
        if "slow" in only:
            results["slow_clients"] = asyncio.run(slow_clients(url, args.slow_connections, args.slow_seconds))
        if "overload" in only:
            results["overload"] = asyncio.run(overload(url, process.pid, 256, args.overload_seconds))
        if "hostile" in only:
            classes = asyncio.run(hostile_classes(url, process.pid, args.hostile_concurrency, args.hostile_files))
            results["hostile_decoding"] = classes
        if "fairness" in only:
            results["fairness"] = asyncio.run(fairness(url, process.pid, args.hostile_concurrency, args.fair_seconds))
        if "json" in only:
            results["json_bodies"] = asyncio.run(json_bodies(url))
        if "score" in only:
            results["capped_scores"] = asyncio.run(capped_scores(url, process.pid, args.score_concurrency))
        results["summary"] = summary(results)
        results["alive_after"] = httpx.get(f"{url}/readyz").status_code == 200
    finally:
        process.terminate()
        process.wait(30)
    emit(results, args.out)


def summary(results: dict) -> dict:
    """The targets' figures: worst RSS growth of the process tree, worst /readyz, worst small-upload wait."""
    runs = [*results.get("heavy_uploads", {}).values(), *results.get("hostile_decoding", {}).values(),
            *(run for key, run in results.get("fairness", {}).items() if key in hostile.WORST_ACCEPTED),
            *([results["capped_scores"]] if "capped_scores" in results else [])]
    out = {}
    if runs:
        out["rss_growth_mb_max"] = max(run["rss_growth_mb"] for run in runs)
        out["readyz_worst_ms"] = max(run["readyz_worst_ms"] for run in runs)
    if "fairness" in results:
        fair = [run for key, run in results["fairness"].items() if key in hostile.WORST_ACCEPTED]
        out["small_upload_wait_worst_ms"] = max(run["small_upload_wait_worst_ms"] for run in fair)
        out["idle_28x28_upload_ms"] = results["fairness"]["idle_28x28_upload_ms"]
        out["idle_256_files_of_28x28_ms"] = results["fairness"]["idle_256_files_of_28x28_ms"]
    return out


if __name__ == "__main__":
    main()
