"""The server edge, decided by measurement: the same app under uvicorn (`python -m service`: uvloop, httptools and the
protocol subclass in service/http/server.py) and under Granian 2 (its Rust HTTP/1 server, one worker, uvloop),
alternating runs, single-image encode at one concurrency (our JSON, or KServe v2 binary tensors). Prints one JSON
line per run, then the medians and the Granian/uvicorn ratio of each.

    pip install 'granian>=2,<3'
    python bench/server_ab.py --rounds 5 --protocol v2
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from serve_bench import (
    REPO,
    cpu_seconds,
    drive,
    encode_requests,
    free_port,
    http_get,
    run_async,
    v2_encode_requests,
    wait_until_idle,
)

COMMANDS = {
    "uvicorn": lambda port: [sys.executable, "-m", "service"],
    "granian": lambda port: [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "uvloop",
                             "--http", "1", "--log-level", "warning", "service.app:create_app"],
}


@contextlib.contextmanager
def serving(server: str, model_dir: str):
    port = free_port()
    env = {**os.environ, "VAE_MODEL_DIR": model_dir, "VAE_PORT": str(port), "VAE_LOG_LEVEL": "warning"}
    process = subprocess.Popen(COMMANDS[server](port), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{server} exited ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(OSError):
                if http_get(port, "/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server} not ready after 120 s")
            time.sleep(0.2)
        wait_until_idle(process.pid)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (Granian serves from a worker process)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in children)


def run(server: str, args) -> dict:
    requests = v2_encode_requests() if args.protocol == "v2" else encode_requests()

    def request(client: int, count: int) -> bytes:
        return requests[(client + count) % len(requests)]

    with serving(server, str(Path(REPO) / "models/mnist_vae/1")) as (port, pid):
        run_async(drive("127.0.0.1", port, request, args.concurrency, 0, args.warmup))
        cpu_before = tree_cpu_seconds(pid)
        result = run_async(drive("127.0.0.1", port, request, args.concurrency, 0, args.duration))
        cpu_after = tree_cpu_seconds(pid)
    return {"rps": result["throughput_rps"], "p50_ms": result["p50_ms"], "errors": result["errors"],
            "server_cpu_us_per_request": round((cpu_after - cpu_before) / max(result["answered"], 1) * 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--protocol", choices=("json", "v2"), default="v2")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {server: [] for server in COMMANDS}
    for _ in range(args.rounds):
        for server in COMMANDS:
            runs[server].append(run(server, args))
            print(json.dumps({"server": server, **runs[server][-1]}), file=sys.stderr)
    medians = {server: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for server, results in runs.items()}
    ratios = [g["rps"] / u["rps"] for g, u in zip(runs["granian"], runs["uvicorn"], strict=True)]
    print(json.dumps({"protocol": args.protocol, "concurrency": args.concurrency, "medians": medians,
                      "granian_over_uvicorn_rps": round(statistics.median(ratios), 3)}, indent=2))


if __name__ == "__main__":
    main()
