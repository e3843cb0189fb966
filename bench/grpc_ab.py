"""A/B of the gRPC front end under environment variants (for example GRPC_EXPERIMENTS): one `python -m service` per
variant, all up at once, single-image ModelInfer (raw tensors, as tritonclient.grpc sends them) at one concurrency
from serve_bench's raw HTTP/2 load generator, runs alternating between the variants. Prints one JSON line per run
(calls/s, p50, the server's CPU per call), then per variant the medians and the median per-round ratio of calls/s to
the first variant (the default environment).

    python bench/grpc_ab.py --rounds 3 'GRPC_EXPERIMENTS=event_engine_poller_for_python'
"""

import argparse
import contextlib
import json
import statistics

from serve_bench import REPO, cpu_seconds, drive_h2, free_port, grpc_encode_requests, run_async, serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help="VAR=VALUE[;VAR=VALUE...] for each variant's server environment")
    parser.add_argument("--model-dir", default=str(REPO / "models" / "mnist_vae" / "1"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    variants = {"default": {}} | {spec: dict(item.split("=", 1) for item in spec.split(";")) for spec in args.variants}
    requests = grpc_encode_requests()

    def make_request(index: int, count: int) -> bytes:
        return requests[(index * 7 + count) % len(requests)]

    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(serving(args.model_dir, extra_env=env, grpc="true",
                                                     grpc_port=str(free_port()), tfserving_grpc_port="0"))
                   for name, env in variants.items()}
        for round_index in range(args.rounds):
            for name, server in servers.items():
                before = cpu_seconds(server.pid)
                result = run_async(drive_h2("127.0.0.1", server.grpc_port, make_request, args.concurrency,
                                            args.warmup, args.duration))
                cpu_us = (cpu_seconds(server.pid) - before) / max(1, result["answered"]) * 1e6
                run = {"variant": name, "round": round_index, "calls_per_s": result["throughput_rps"],
                       "p50_ms": result["p50_ms"], "server_cpu_us_per_call": round(cpu_us),
                       "errors": result["errors"], "stalled": result["stalled"]}
                runs[name].append(run)
                print(json.dumps(run), flush=True)
    for name, rows in runs.items():
        ratios = [row["calls_per_s"] / base["calls_per_s"] for row, base in zip(rows, runs["default"], strict=True)]
        print(json.dumps({"variant": name,
                          "median_calls_per_s": statistics.median(row["calls_per_s"] for row in rows),
                          "median_server_cpu_us_per_call": statistics.median(row["server_cpu_us_per_call"]
                                                                             for row in rows),
                          "median_ratio_to_default": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    main()
