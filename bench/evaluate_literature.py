"""A model version's figures as the literature reports them, computed through its exported SavedModel's signatures
alone (`score` and `encode`), resumable:

- NLL (-IWAE_k) with k=5000 on the first 1,000 test digits and with k=1000 on all 10,000;
- the ELBO (analytic KL + the k-sample distortion), the KL and the distortion, from the k=1000 pass;
- active units: latents whose posterior mean varies across the test digits by more than 0.01 (Burda et al. 2016);
- throughput in decodes per second.

Test digits are binarized once with seed 0 (training.evaluate.BINARIZATION_SEED); test image i gets the posterior
noise seed i, as `python -m training evaluate` and a score request with seed 0 do. Each chunk's per-image scores go
to <out>/<pass>/<first image>.npz as soon as they are computed, and a rerun skips the chunks already there whole: stop
it (or kill -STOP / -CONT it) at any time. `python bench/eval_chunks.py A B` compares two --out folders image by image.

    nice -n 19 python bench/evaluate_literature.py --model-dir models/mnist_vae/3 --data-dir ../shared/data/mnist \\
        --out runs/eval-v3 [--update-metadata] [--passes k1000 k5000 active]
"""

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # contract, training
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from contract.tf_logs import quiet_tensorflow_logs  # noqa: E402

quiet_tensorflow_logs()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from eval_chunks import PASSES, chunk_path, read_chunk, read_pass, write_chunk  # noqa: E402  (bench/)

import contract  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import BINARIZATION_SEED  # noqa: E402
from training.train import checkpoint_hash  # noqa: E402

ACTIVE_UNIT_THRESHOLD = 0.01


def run_pass(score, x, name, n, out, log=print):
    """Score images [0, n) through the signature, chunk by chunk, skipping chunk files already written whole.
    Returns the per-image scores of the chunks done so far (in order, up to the first missing one), the images done,
    and the decode rates."""
    k, _, chunk, call = PASSES[name]
    (out / name).mkdir(parents=True, exist_ok=True)
    # The chunks not yet written whole, found once: each is then written whole or not at all.
    missing = [lo for lo in range(0, n, chunk) if read_chunk(chunk_path(out, name, lo), min(chunk, n - lo)) is None]
    done = n - sum(min(chunk, n - lo) for lo in missing)
    computed_decodes, computed_seconds = 0, 0.0
    for lo in missing:
        hi = min(lo + chunk, n)
        start = time.perf_counter()
        parts = {}
        for c in range(lo, hi, call):
            end = min(c + call, hi)
            result = score(images=tf.constant(x[c:end]), k=tf.constant(k, tf.int32),
                           seeds=tf.constant(np.arange(c, end, dtype=np.int64)))
            for key, value in result.items():
                parts.setdefault(key, []).append(value.numpy())
        seconds = time.perf_counter() - start
        write_chunk(chunk_path(out, name, lo), {key: np.concatenate(v) for key, v in parts.items()}, seconds)
        computed_decodes += k * (hi - lo)
        computed_seconds += seconds
        done += hi - lo
        log(f"{name}: images {lo}-{hi} in {seconds:.0f} s ({k * (hi - lo) / seconds:.0f} decodes/s); {done}/{n} done")
    scores, all_seconds = read_pass(out, name, n)
    images = len(scores.get("nll", []))
    return scores, images, {"decodes_per_second": round(k * images / all_seconds, 1) if all_seconds else None,
                            "seconds": round(all_seconds, 1),
                            "decodes_per_second_this_process": round(computed_decodes / computed_seconds, 1)
                            if computed_seconds else None}


def active_units(encode, x, threshold=ACTIVE_UNIT_THRESHOLD, batch=500):
    means = np.concatenate([encode(images=tf.constant(x[i:i + batch]))["mean"].numpy()
                            for i in range(0, len(x), batch)])
    variance = means.var(axis=0)
    return int((variance > threshold).sum()), [round(float(v), 4) for v in variance]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="an exported version folder, e.g. models/mnist_vae/3")
    p.add_argument("--data-dir", help="folder with the MNIST IDX .gz files (default: download)")
    p.add_argument("--out", required=True, help="folder for the per-chunk results and summary.json")
    p.add_argument("--passes", nargs="+", default=["active", "k1000", "k5000"],
                   choices=["active", "k1000", "k5000"], help="(default: all, in this order)")
    p.add_argument("--limit", type=int, help="score only the first N images of each pass (a throughput check)")
    p.add_argument("--update-metadata", action="store_true",
                   help="write the figures into the version's metadata.json (only passes that completed)")
    args = p.parse_args(argv)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, _ = data.load_mnist("test", args.data_dir)
    x = data.fixed_binarization(images, seed=BINARIZATION_SEED)
    root = tf.saved_model.load(args.model_dir)
    score, encode = root.signatures["score"], root.signatures["encode"]
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    weights = checkpoint_hash(args.model_dir)  # which weights the chunks score
    if weights is None:
        raise SystemExit(f"{args.model_dir} has no SavedModel fingerprint to record which weights it scores")
    recorded = summary.get("checkpoint_hash")
    if recorded is None and any(out.glob("k*/[0-9]*.npz")):
        raise SystemExit(f"{out} holds scores without a record of the weights they came from (no checkpoint_hash in "
                         f"its summary.json): pass another --out")
    if recorded not in (None, weights):  # resuming would mix two models' scores
        raise SystemExit(f"{out} holds scores of other weights (checkpoint_hash {recorded}, {args.model_dir} has "
                         f"{weights}): pass another --out")
    summary.update(model_dir=str(args.model_dir), checkpoint_hash=weights, test_images=len(x),
                   binarization_seed=BINARIZATION_SEED, sampling_seed=0)
    summary_path.write_text(json.dumps(summary, indent=2))  # the weights on record before the first chunk

    def log(line):
        print(time.strftime("%H:%M:%S"), line, flush=True)

    for name in args.passes:
        if name == "active":
            count, variance = active_units(encode, x)
            summary["active"] = {"active_units": count, "threshold": ACTIVE_UNIT_THRESHOLD,
                                 "posterior_mean_variance": variance}
            log(f"active units: {count} of {len(variance)}")
            continue
        k, n, _, _ = PASSES[name]
        n = min(n, args.limit or n, len(x))
        scores, done, rate = run_pass(score, x, name, n, out, log)
        summary[name] = {"k": k, "images": n, "images_done": done, "complete": done >= n, **rate}
        if done:
            summary[name].update({f"mean_{key}_nats": float(np.mean(v)) for key, v in scores.items()})
            summary[name]["nll_standard_error_nats"] = float(np.std(scores["nll"]) / np.sqrt(done))
        summary_path.write_text(json.dumps(summary, indent=2))
        log(f"{name}: {json.dumps({key: v for key, v in summary[name].items()})}")
    summary_path.write_text(json.dumps(summary, indent=2))

    if args.update_metadata:
        meta = contract.read_metadata(pathlib.Path(args.model_dir))
        metrics = dict(meta.get("metrics") or {})
        full = summary.get("k1000", {})
        if full.get("complete") and full.get("images") == 10_000:
            # The standard names, at k=1000 on all 10,000 test digits.
            metrics.update(test_elbo_nats=full["mean_elbo_nats"], test_nll_iwae_nats=full["mean_nll_nats"],
                           test_kl_nats=full["mean_kl_nats"], test_distortion_nats=full["mean_distortion_nats"],
                           iwae_k=1000, test_images=10_000, binarization_seed=BINARIZATION_SEED, sampling_seed=0,
                           seconds=full["seconds"], decodes_per_second=full["decodes_per_second"])
        sub = summary.get("k5000", {})
        if sub.get("complete") and sub.get("images") == 1_000:
            metrics["test_nll_k5000_first1000_nats"] = sub["mean_nll_nats"]
        if "active" in summary:
            metrics["active_units"] = summary["active"]["active_units"]
            metrics["active_unit_threshold"] = ACTIVE_UNIT_THRESHOLD
        meta["metrics"] = metrics
        contract.write_metadata(pathlib.Path(args.model_dir), meta)
        log(f"metadata updated: {sorted(metrics)}")
    print(json.dumps({key: v for key, v in summary.items() if key != "active"} |
                     {"active_units": summary.get("active", {}).get("active_units")}, indent=2))


if __name__ == "__main__":
    main()
