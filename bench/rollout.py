"""Rollout benchmark: a new model version under load, cold starts, and memory over repeated rollouts.

    python bench/rollout.py --out bench/results/rollout.json

Copies version 1 into a temporary base path, starts `python -m service` on it and drives it with single-image JSON
`/v1/encode` requests over `concurrency` keep-alive connections (serve_bench's raw asyncio client, reading
X-Model-Version too). After `--phase` seconds it writes version 2 (version 1 with every weight scaled, exported via a
temp folder and a rename) into the base path. Reports req/s and p99 before the folder appears, during the rollout
(folder appears -> old version END) and after it, failed requests, and the time from the folder appearing to the
first answer from version 2. Then: RSS after 1 and after `--rollouts` rollouts (idle, each waiting for the old
version's END), the time from process start to /readyz 200 idle (median of `--cold-starts`), and a restart under
load: the service is killed (SIGKILL) while `concurrency` clients drive it and started again on the same port.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import emit  # noqa: E402
from serve_bench import REPO, encode_requests, free_port, http_get  # noqa: E402

sys.path.insert(0, str(REPO))
import contract  # noqa: E402


def make_perturbed(source: Path, target: Path) -> None:
    """Version 1 with different weights and the same signatures, in a subprocess (this process stays TF-free)."""
    code = f"""
import tensorflow as tf
root = tf.saved_model.load({str(source)!r})
for v in {{id(v): v for f in root.signatures.values() for v in f.variables}}.values():
    v.assign(v.numpy() * 1.05 + 0.01)
tf.saved_model.save(root, {str(target)!r}, signatures=dict(root.signatures))
"""
    subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
    shutil.copy(source / contract.METADATA_FILE, target / contract.METADATA_FILE)


def place(base: Path, number: int, source: Path) -> float:
    """Write a version folder as exports do (temp folder, rename); returns the time it appeared."""
    tmp = base / f".tmp-{number}"
    shutil.copytree(source, tmp)
    contract.write_metadata(tmp, {**contract.read_metadata(tmp), "model_version": number})
    os.rename(tmp, base / str(number))
    return time.perf_counter()


def start_service(base: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VAE_MODEL_BASE_PATH": str(base), "VAE_PORT": str(port), "VAE_LOG_LEVEL": "warning",
           "VAE_MODEL_POLL_S": "0.5"}
    return subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 300) -> float:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        assert process.poll() is None, f"service exited with {process.returncode}"
        try:
            if http_get(port, "/readyz")[0] == 200:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("not ready")


def status(port: int) -> dict[str, str]:
    document = json.loads(http_get(port, "/v1/models/mnist_vae")[1])
    return {entry["version"]: entry["state"] for entry in document["model_version_status"]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


async def load(port: int, concurrency: int, stop: asyncio.Event, log: list) -> None:
    """Keep-alive clients; log (time answered, status, latency s, X-Model-Version). Connection failures -> status -1."""
    requests = encode_requests()

    async def client(index: int) -> None:
        reader = writer = None
        count = 0
        while not stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t0 = time.perf_counter()
                writer.write(requests[(index + count) % len(requests)])
                count += 1
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                version = head.lower().split(b"x-model-version:")[1].split(b"\r\n")[0].strip().decode() \
                    if b"x-model-version:" in head.lower() else None
                log.append((time.perf_counter(), status, time.perf_counter() - t0, version))
            except (OSError, asyncio.IncompleteReadError):
                log.append((time.perf_counter(), -1, 0.0, None))
                writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(concurrency)))


def window(log: list, start: float, end: float) -> dict:
    rows = [row for row in log if start <= row[0] < end]
    ok = [row[2] * 1000 for row in rows if row[1] == 200]
    return {"seconds": round(end - start, 2), "ok": len(ok), "rps": round(len(ok) / (end - start), 1),
            "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok else None,
            "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok else None,
            "failed": len(rows) - len(ok), "statuses": dict(Counter(str(row[1]) for row in rows)),
            "versions": dict(Counter(str(row[3]) for row in rows))}


async def rollout_under_load(port: int, base: Path, v2: Path, concurrency: int, phase_s: float) -> dict:
    log: list = []
    stop = asyncio.Event()
    task = asyncio.create_task(load(port, concurrency, stop, log))
    t0 = time.perf_counter()
    await asyncio.sleep(phase_s)
    appeared = await asyncio.to_thread(place, base, 2, v2)
    while (await asyncio.to_thread(status, port)).get("1") != "END":
        await asyncio.sleep(0.05)
    ended = time.perf_counter()
    await asyncio.sleep(phase_s)
    stop.set()
    await task
    first_v2 = min(row[0] for row in log if row[3] == "2")
    return {"concurrency": concurrency, "before": window(log, t0, appeared), "during": window(log, appeared, ended),
            "after": window(log, ended, ended + phase_s), "failed_requests": sum(row[1] != 200 for row in log),
            "requests": len(log), "folder_to_serving_s": round(first_v2 - appeared, 2),
            "folder_to_old_unloaded_s": round(ended - appeared, 2)}


def cold_start(base: Path) -> float:
    """Seconds from process start to /readyz 200, idle."""
    port = free_port()
    started = time.perf_counter()
    process = start_service(base, port)
    try:
        return round(wait_ready(port, process) - started, 2)
    finally:
        process.terminate()
        process.wait(30)


def restart_under_load(base: Path, concurrency: int) -> dict:
    """kill -9 a loaded service and start a new one on the same port while the clients keep knocking."""
    port = free_port()

    async def run() -> dict:
        first = start_service(base, port)
        await asyncio.to_thread(wait_ready, port, first)
        stop, log = asyncio.Event(), []
        task = asyncio.create_task(load(port, concurrency, stop, log))
        await asyncio.sleep(3)
        first.kill()
        killed = time.perf_counter()
        await asyncio.to_thread(first.wait)
        second = start_service(base, port)
        started = time.perf_counter()
        try:
            ready = await asyncio.to_thread(wait_ready, port, second)
            served = None
            while served is None:
                await asyncio.sleep(0.01)
                served = next((row[0] for row in log if row[0] > ready and row[1] == 200), None)
        finally:
            stop.set()
            await task
            second.terminate()
            second.wait(30)
        return {"start_to_ready_s": round(ready - started, 2), "kill_to_ready_s": round(ready - killed, 2),
                "kill_to_first_answer_s": round(served - killed, 2), "concurrency": concurrency}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--phase", type=float, default=10, help="seconds of load before and after the rollout")
    parser.add_argument("--rollouts", type=int, default=10, help="rollouts for the RSS figure")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        v1, v2 = REPO / "models" / "mnist_vae" / "1", tmp / "perturbed"
        make_perturbed(v1, v2)
        base = tmp / "mnist_vae"
        base.mkdir()
        place(base, 1, v1)
        result = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}

        port = free_port()
        process = start_service(base, port)
        try:
            wait_ready(port, process)
            rss = {"ready": rss_mb(process.pid)}
            result["rollout"] = asyncio.run(rollout_under_load(port, base, v2, args.concurrency, args.phase))
            print(json.dumps(result["rollout"]), file=sys.stderr)
            time.sleep(2)
            rss["after_1"] = rss_mb(process.pid)
            for number in range(3, args.rollouts + 2):
                place(base, number, v2 if number % 2 == 0 else v1)
                while status(port).get(str(number - 1)) != "END":
                    time.sleep(0.1)
            time.sleep(2)
            rss[f"after_{args.rollouts}"] = rss_mb(process.pid)
            rss["growth_per_rollout_mb"] = round((rss[f"after_{args.rollouts}"] - rss["after_1"])
                                                 / (args.rollouts - 1), 1)
            result["rss_mb"] = rss
            print(json.dumps(rss), file=sys.stderr)
        finally:
            process.terminate()
            process.wait(30)

        for number in [n for n in contract.version_folders(base) if n > 1]:
            shutil.rmtree(base / str(number))
        idle = [cold_start(base) for _ in range(args.cold_starts)]
        result["cold_start_s"] = {"idle_runs": idle, "idle_median": statistics.median(idle),
                                  "restart_under_load": restart_under_load(base, args.concurrency)}
        result["load_average_at_end"] = os.getloadavg()[0]
    emit(result, args.out)


if __name__ == "__main__":
    main()
