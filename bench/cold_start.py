"""Cold start: process start -> /readyz 200, idle, for the bundled base path (default policy `latest`). Prints JSON.

Each run starts `python -m service` on a free port and records the wall time to ready, the CPU seconds the process
had used by then (user + sys from /proc: far less sensitive to other load on a shared machine than wall time), and the
time until the model threads had warmed the padded sizes above VAE_BATCH_READY_SIZE (from their log lines).

    python bench/cold_start.py --runs 5 [--ready-size 256]   # 256: every size warmed before ready (the old way)
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import emit  # noqa: E402
from rollout import wait_ready  # noqa: E402
from serve_bench import REPO, cpu_seconds, free_port  # noqa: E402

PADDED = ("encode", "decode", "reconstruct")


def one_run(base: Path, ready_size: int | None) -> dict:
    port = free_port()
    env = {**os.environ, "VAE_MODEL_BASE_PATH": str(base), "VAE_PORT": str(port), "VAE_LOG_LEVEL": "info"}
    if ready_size:
        env["VAE_BATCH_READY_SIZE"] = str(ready_size)
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            ready = wait_ready(port, process)
            result = {"ready_s": round(ready - started, 2), "cpu_to_ready_s": round(cpu_seconds(process.pid), 2)}
            deadline = time.perf_counter() + 120
            while time.perf_counter() < deadline:  # the model threads warming the larger sizes after ready
                log.seek(0)
                text = log.read()
                if all(f"{name} v" in text and "warmed up to batch size" in text.split(f"{name} v", 1)[1]
                       for name in PADDED) or ready_size == 0:
                    break
                if ready_size and ready_size >= 256:
                    break
                time.sleep(0.1)
            result["all_sizes_warmed_s"] = round(time.perf_counter() - started, 2)
            result["cpu_all_warmed_s"] = round(cpu_seconds(process.pid), 2)
            return result
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--base-path", type=Path, default=REPO / "models" / "mnist_vae")
    parser.add_argument("--ready-size", type=int, default=None, help="VAE_BATCH_READY_SIZE (default: the setting's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = [one_run(args.base_path, args.ready_size) for _ in range(args.runs)]
    result = {"ready_size": args.ready_size or "default", "runs": runs, "cpu_count": os.cpu_count(),
              "load_average_at_end": os.getloadavg()}
    for key in ("ready_s", "cpu_to_ready_s", "all_sizes_warmed_s", "cpu_all_warmed_s"):
        result[f"{key}_median"] = statistics.median(run[key] for run in runs)
    emit(result, args.out)


if __name__ == "__main__":
    main()
