"""A/B of the service at one concurrency: runs alternate between checkouts (or settings), so drift of a shared VM
falls on every variant alike. Prints one JSON line per run, then the medians as JSON.

    git worktree add /tmp/before HEAD~1
    python bench/serve_ab.py --rounds 3 /tmp/before . '.:VAE_TF_INTRA_OP_THREADS=1'

A variant is a checkout directory, optionally followed by ':' and ';'-separated VAR=VALUE environment settings. Each
run starts that checkout's `python -m service` with its bundled model, drives single-image JSON encode requests for
--warmup + --duration seconds, and reports requests/s, p50, the event loop's CPU per request and the mean model
call time per batch.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RUN_CODE = """
import json, os, re, sys
from pathlib import Path
checkout, concurrency, warmup, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sys.path.insert(0, str(Path(checkout) / "bench"))
import serve_bench as sb

def main_thread_cpu(pid):
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def inference(port):
    text = sb.http_get(port, "/metrics")[1].decode()
    return [float(re.search(rf'vae_model_inference_seconds_{kind}{{signature="encode"}} (\\S+)', text).group(1))
            for kind in ("sum", "count")]

requests = sb.encode_requests()
make = lambda client, count: requests[(client + count) % len(requests)]
with sb.serving(str(Path(checkout) / "models/mnist_vae/1")) as server:
    sb.run_async(sb.drive("127.0.0.1", server.port, make, concurrency, 0, warmup))
    before, cpu_before = inference(server.port), main_thread_cpu(server.pid)
    result = sb.run_async(sb.drive("127.0.0.1", server.port, make, concurrency, 0, duration))
    after, cpu_after = inference(server.port), main_thread_cpu(server.pid)
print(json.dumps({"rps": result["throughput_rps"], "p50_ms": result["p50_ms"], "errors": result["errors"],
                  "event_loop_us_per_request": round((cpu_after - cpu_before) / max(result["answered"], 1) * 1e6),
                  "model_call_ms": round((after[0] - before[0]) / max(after[1] - before[1], 1) * 1000, 2)}))
"""


def run(variant: str, args) -> dict:
    checkout, _, settings = variant.partition(":")
    env = {**os.environ, **dict(item.split("=", 1) for item in settings.split(";") if item)}
    out = subprocess.run([sys.executable, "-c", RUN_CODE, str(Path(checkout).resolve()), str(args.concurrency),
                          str(args.warmup), str(args.duration)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="CHECKOUT[:VAR=VALUE;...]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            runs[variant].append(run(variant, args))
            print(json.dumps({"variant": variant, **runs[variant][-1]}), file=sys.stderr)
    medians = {variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for variant, results in runs.items()}
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
