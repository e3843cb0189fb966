"""The per-chunk score files of bench/evaluate_literature.py, and paired comparisons of two of its --out folders.

A pass writes <out>/<pass>/<first image>.npz for each chunk of images: the per-image scores (elbo, kl, distortion,
nll, in nats) and the seconds the chunk took. A chunk file counts only if it holds the whole chunk: a run with a
--limit that ends inside a chunk writes a short file, which a later, longer run computes again (a longer run's file
serves a shorter run as it is).

    python bench/eval_chunks.py runs/eval-v4 runs/eval-mnist_vae-5 [--pass k1000] [--images 500]

prints the paired difference (second minus first) over the images both folders scored, with its standard error:
both folders' images carry the same binarization and posterior-noise seeds, so the per-image differences cancel
most of the digits' spread (the standard error of a difference of two unpaired means is tens of times larger).
"""

import argparse
import json
import pathlib

import numpy as np

SCORES = ("elbo", "kl", "distortion", "nll")
# name: (k, images, images per chunk file, images per signature call)
PASSES = {"k1000": (1000, 10_000, 100, 20), "k5000": (5000, 1_000, 20, 4)}


def chunk_path(out, name: str, lo: int) -> pathlib.Path:
    return pathlib.Path(out) / name / f"{lo:05d}.npz"


def read_chunk(path: pathlib.Path, images: int | None = None) -> dict | None:
    """A chunk file's first `images` scores (all it holds if None) and their share of its seconds, or None if it is
    absent or holds fewer (a longer run's file serves a shorter one; a shorter run's is computed again by a longer)."""
    if not path.exists():
        return None
    with np.load(path) as stored:
        held = len(stored["nll"])
        images = held if images is None else images
        if held < images:
            return None
        return {key: stored[key][:images] for key in SCORES} | {"seconds": float(stored["seconds"]) * images / held}


def write_chunk(path: pathlib.Path, scores: dict, seconds: float) -> None:
    """Complete or absent: written to a temporary name, then renamed."""
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **scores, seconds=seconds)
    tmp.replace(path)


def read_pass(out, name: str, n: int | None = None) -> tuple[dict, float]:
    """The per-image scores of images 0, 1, ... of [0, n) in order, up to the first chunk not written (whole), and the
    seconds they took. Without n: every image written, up to a short chunk (a --limit run's last) included."""
    chunk = PASSES[name][2]
    parts, seconds = [], 0.0
    for lo in range(0, n or PASSES[name][1], chunk):
        wanted = min(chunk, n - lo) if n else chunk
        stored = read_chunk(chunk_path(out, name, lo), wanted if n else None)
        if stored is None:
            break
        parts.append(stored)
        seconds += stored["seconds"]
        if len(stored["nll"]) < wanted:
            break
    scores = {key: np.concatenate([part[key] for part in parts]) for key in SCORES} if parts else {}
    return scores, seconds


def paired(first: dict, second: dict, images: int | None = None) -> dict:
    """Means of both and of the per-image difference second - first, over the images both scored (the first
    `images` of them if given), with the standard errors of the difference."""
    n = min(len(first.get("nll", [])), len(second.get("nll", [])), images or 10**9)
    if n < 2:
        raise ValueError(f"{n} images scored by both: a paired comparison needs at least 2")
    report = {"images": n}
    for key in ("nll", "elbo"):
        a, b = first[key][:n].astype(np.float64), second[key][:n].astype(np.float64)
        difference = b - a
        report[key] = {"first": float(a.mean()), "second": float(b.mean()), "difference": float(difference.mean()),
                       "difference_standard_error": float(difference.std(ddof=1) / np.sqrt(n))}
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", help="an --out folder of bench/evaluate_literature.py")
    p.add_argument("second", help="another, scored with the same seeds (the difference is second - first)")
    p.add_argument("--pass", dest="name", default="k1000", choices=sorted(PASSES))
    p.add_argument("--images", type=int, help="compare only the first N images (default: all both scored)")
    args = p.parse_args(argv)
    first, _ = read_pass(args.first, args.name)
    second, _ = read_pass(args.second, args.name)
    try:
        report = paired(first, second, args.images)
    except ValueError as err:
        raise SystemExit(f"{args.first} and {args.second}, pass {args.name}: {err}") from None
    print(json.dumps({"pass": args.name, "first": args.first, "second": args.second, **report}, indent=2))


if __name__ == "__main__":
    main()
