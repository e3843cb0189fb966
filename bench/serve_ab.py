"""A/B of the service at one concurrency: runs alternate between checkouts (or settings), so drift of a shared VM
falls on every variant alike. Prints one JSON line per run, then the medians as JSON.

    git worktree add /tmp/before HEAD~1
    python bench/serve_ab.py --rounds 3 /tmp/before . '.:VAE_TF_INTRA_OP_THREADS=1'
    python bench/serve_ab.py --protocol grpc --rounds 3 . '.:GRPC_EXPERIMENTS=event_engine_poller_for_python'

A variant is a checkout directory, optionally followed by ':' and ';'-separated VAR=VALUE environment settings. Each
run starts that checkout's `python -m service` with its bundled model, drives single-image encode requests (our
JSON; KServe v2 binary tensors with --protocol v2; gRPC ModelInfer with raw tensors, as tritonclient.grpc sends them,
over serve_bench's HTTP/2 load generator, with --protocol grpc) for --warmup + --duration seconds, and reports
requests/s, p50, the event loop's and the whole process's CPU per request and the mean model call time per batch;
with two or more variants, each later variant's per-round req/s ratios to the first and their median (the figure the
request-path budget is judged by).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from serve_bench import (
    cpu_seconds,
    drive_server,
    encode_requests,
    free_port,
    grpc_encode_requests,
    histogram_totals,
    serving,
    v2_encode_requests,
)

MODEL_CALL = "vae_model_inference_seconds"  # the service's model-call-time histogram


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of the service's main thread, the one running the event loop."""
    return cpu_seconds(pid, thread=pid)


def run(variant: str, args) -> dict:
    """One run of one variant: its checkout's service, its environment, --warmup then --duration seconds."""
    checkout, _, settings = variant.partition(":")
    repo = Path(checkout).resolve()
    env = dict(item.split("=", 1) for item in settings.split(";") if item)
    requests = {"json": encode_requests, "v2": v2_encode_requests, "grpc": grpc_encode_requests}[args.protocol]()
    grpc = {"grpc": "true", "grpc_port": str(free_port()), "tfserving_grpc_port": "0"} if args.protocol == "grpc" \
        else {}

    def request(client: int, count: int) -> bytes:
        return requests[(client + count) % len(requests)]

    with serving(str(repo / "models/mnist_vae/1"), repo=repo, extra_env=env, **grpc) as server:
        def load(seconds: float) -> dict:
            return drive_server(server, request, args.concurrency, 0, seconds, grpc=args.protocol == "grpc")

        if args.warmup > 0:
            load(args.warmup)
        calls_before, cpu_before = histogram_totals(server.port, MODEL_CALL, "encode"), main_thread_cpu(server.pid)
        process_before = cpu_seconds(server.pid)
        result = load(args.duration)
        calls_after, cpu_after = histogram_totals(server.port, MODEL_CALL, "encode"), main_thread_cpu(server.pid)
        process_after = cpu_seconds(server.pid)
    model_seconds, model_calls = calls_after[0] - calls_before[0], calls_after[1] - calls_before[1]
    answered = max(result["answered"], 1)
    return {"rps": result["throughput_rps"], "p50_ms": result["p50_ms"], "errors": result["errors"],
            "event_loop_us_per_request": round((cpu_after - cpu_before) / answered * 1e6),
            "process_us_per_request": round((process_after - process_before) / answered * 1e6),
            "model_call_ms": round(model_seconds / max(model_calls, 1) * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="CHECKOUT[:VAR=VALUE;...]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--protocol", choices=("json", "v2", "grpc"), default="json",
                        help="single-image encode requests as our JSON, as KServe v2 binary tensors, or as gRPC "
                        "ModelInfer on the same server's gRPC port")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            runs[variant].append(run(variant, args))
            print(json.dumps({"variant": variant, **runs[variant][-1]}), file=sys.stderr)
    medians = {variant: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for variant, results in runs.items()}
    # Each later variant against the first, round by round (both ran minutes apart at most): the ratio of req/s and
    # the differences of CPU per request (the event loop's, and the whole process's: gRPC's own threads are outside
    # the loop), and their medians.
    first = runs[args.variants[0]]
    for variant in args.variants[1:]:
        pairs = list(zip(first, runs[variant], strict=True))
        ratios = [round(b["rps"] / a["rps"], 3) for a, b in pairs]
        medians[variant] |= {"rps_ratios": ratios, "rps_ratio_median": statistics.median(ratios)}
        for cpu in ("event_loop", "process"):
            differences = [b[f"{cpu}_us_per_request"] - a[f"{cpu}_us_per_request"] for a, b in pairs]
            medians[variant] |= {f"{cpu}_us_differences": differences,
                                 f"{cpu}_us_difference_median": statistics.median(differences)}
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
