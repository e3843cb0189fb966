"""How well the score route's NLL separates MNIST test digits from images that are not MNIST digits.

Every image goes through the running service's POST /v1/score (in-process app, the model given by --model-dir), in
two ways: as JSON arrays in [0, 1] (scored as they are) and as PNG uploads with the default upload options (the
service's own preprocessing). Per out-of-distribution set: AUROC of the NLL (higher = more anomalous) against real
test digits, and the share flagged at the default threshold, for the one-sided test (the route's default), the
two-sided typicality test (`test=two-sided`) and the likelihood ratio against the background model (`test=ratio`,
score -llr: lower llr = more anomalous). The false-positive rate is the share of real test digits flagged.

    python bench/ood.py --data-dir ../shared/data/mnist --out bench/results/ood.json
"""

import argparse
import io
import json
import pathlib
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from report import emit

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnpqrtuvwxyz"


def mnist_test(data_dir, n, offset=0):
    """uint8 test digits offset..offset+n as float32 (n, 28, 28) in [0, 1] (grey, as the score route gets them)."""
    from training.data import load_mnist

    images, _ = load_mnist("test", data_dir)
    return images[offset : offset + n, ..., 0].astype(np.float32) / 255.0


def _canvas(draw_fn, size=28):
    image = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(image))
    return np.asarray(image, np.float32) / 255.0


def letters(n, rng):
    """Letters in DejaVu Sans Bold, white on black, about the height of an MNIST digit (20 px box)."""
    out = []
    for i in range(n):
        font = ImageFont.truetype(FONT, int(rng.integers(18, 24)))
        char = LETTERS[i % len(LETTERS)]

        def draw(d, char=char, font=font):
            d.text((14 + rng.integers(-2, 3), 14 + rng.integers(-2, 3)), char, fill=255, font=font, anchor="mm")

        out.append(_canvas(draw))
    return np.stack(out)


def shapes(n, rng):
    """Circles, rectangles, triangles and crosses, outlined (stroke 2-3 px) or filled, within a 20 px box."""
    out = []
    for i in range(n):
        kind, width = i % 4, int(rng.integers(2, 4))
        fill = 255 if rng.random() < 0.3 else None
        x0, y0 = rng.integers(4, 9, 2)
        x1, y1 = rng.integers(19, 25, 2)

        def draw(d, kind=kind, width=width, fill=fill, box=(int(x0), int(y0), int(x1), int(y1))):
            if kind == 0:
                d.ellipse(box, outline=255, width=width, fill=fill)
            elif kind == 1:
                d.rectangle(box, outline=255, width=width, fill=fill)
            elif kind == 2:
                d.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], outline=255,
                          width=width, fill=fill)
            else:
                d.line([box[:2], box[2:]], fill=255, width=width + 1)
                d.line([(box[0], box[3]), (box[2], box[1])], fill=255, width=width + 1)

        out.append(_canvas(draw))
    return np.stack(out)


def sklearn_digits(n):
    """scikit-learn's 8x8 digits (values 0..16), upscaled to 20x20 (bilinear) and centred in 28x28 like MNIST."""
    from sklearn.datasets import load_digits

    out = []
    for digit in load_digits().images[:n]:
        small = Image.fromarray(np.round(digit / 16 * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        canvas = np.zeros((28, 28), np.float32)
        canvas[4:24, 4:24] = np.asarray(small, np.float32) / 255.0
        out.append(canvas)
    return np.stack(out)


def ood_sets(data_dir, n, offset, rng):
    digits = mnist_test(data_dir, n, offset)
    return {
        "uniform_noise": rng.random((n, 28, 28), dtype=np.float32),
        "blank": np.zeros((min(n, 20), 28, 28), np.float32),
        "constant": np.broadcast_to(np.linspace(0.05, 1.0, min(n, 40), dtype=np.float32)[:, None, None],
                                    (min(n, 40), 28, 28)).copy(),
        "inverted_digits": 1.0 - digits,
        "rotated_digits_90": np.rot90(digits, axes=(1, 2)).copy(),
        "letters": letters(n, rng),
        "shapes": shapes(n, rng),
        "sklearn_digits_8x8": sklearn_digits(n),
    }


def png(image):
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# An upload the service refuses (422: its preprocessing finds no digit, e.g. a blank page) counts as the most
# anomalous answer (NLL 1e9): it is rejected before it is scored.
REFUSED = {"nll": 1e9, "percentile": 100.0, "llr": -1e9, "llr_percentile": 0.0}


def score(client, images, mode, seed, batch=64):
    """NLL, its percentile, llr and its percentile of every image, through POST /v1/score (default k, threshold and
    preprocessing; the llr fields come with every response of a model with a background model), and how many
    uploads were refused. A refused batch of uploads is sent again one image at a time, to find which."""

    def post(part, first):
        if mode == "json":
            return client.post(f"/v1/score?seed={seed + first}", json={"images": part.tolist()})
        files = [("files", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(part)]
        return client.post(f"/v1/score?seed={seed + first}", files=files)

    rows = []
    for lo in range(0, len(images), batch):
        response = post(images[lo : lo + batch], lo)
        if response.status_code == 422 and mode == "upload":
            for i in range(lo, min(lo + batch, len(images))):
                one = post(images[i : i + 1], i)
                rows += [REFUSED] if one.status_code == 422 else one.raise_for_status().json()["scores"]
            continue
        response.raise_for_status()
        rows += response.json()["scores"]
    refused = sum(row is REFUSED for row in rows)
    return (*(np.array([row[key] for row in rows], dtype=float) for key in REFUSED), refused)


def flagged(percentile, threshold, test):
    """As the route decides (service/api/v1/scoring.py); for 'ratio' `percentile` is the llr's."""
    if test == "ratio":
        return percentile < 100 - threshold
    if test == "upper":
        return percentile > threshold
    tail = (100 - threshold) / 2
    return (percentile > 100 - tail) | (percentile < tail)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with the four MNIST IDX .gz files")
    p.add_argument("--model-dir", help="a version folder (default: the highest bundled version, the one served)")
    p.add_argument("--inliers", type=int, default=500, help="real MNIST test digits (the first N)")
    p.add_argument("--per-set", type=int, default=100, help="images per out-of-distribution set")
    p.add_argument("--threshold", type=float, default=99.0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.model_dir is None:
        base = ROOT / "models" / "mnist_vae"
        args.model_dir = str(max((f for f in base.iterdir() if f.name.isdigit()), key=lambda f: int(f.name)))

    from fastapi.testclient import TestClient
    from sklearn.metrics import roc_auc_score

    from service.app import create_app
    from service.settings import Settings

    rng = np.random.default_rng(0)
    inliers = mnist_test(args.data_dir, args.inliers)
    sets = ood_sets(args.data_dir, args.per_set, offset=args.inliers, rng=rng)
    result = {"command": "python bench/ood.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model_dir": args.model_dir, "threshold": args.threshold, "inliers": len(inliers), "modes": {}}
    start = time.time()
    with TestClient(create_app(Settings(model_dir=pathlib.Path(args.model_dir)))) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.1)
        meta = client.get("/v1/model").json()
        result["model"] = {"name": meta["name"], "version": meta["version"]}
        for mode in ("json", "upload"):
            in_nll, in_pct, in_llr, in_llr_pct, in_refused = score(client, inliers, mode, seed=1_000_000)
            rows = {"mnist_test": {"images": len(inliers), "refused": in_refused,
                                   "median_nll": float(np.median(in_nll)),
                                   "median_llr": float(np.median(in_llr)),
                                   "flagged_upper": float(flagged(in_pct, args.threshold, "upper").mean()),
                                   "flagged_two_sided": float(flagged(in_pct, args.threshold, "two-sided").mean()),
                                   "flagged_ratio": float(flagged(in_llr_pct, args.threshold, "ratio").mean())}}
            for name, images in sets.items():
                nll, pct, llr, llr_pct, refused = score(client, images, mode, seed=2_000_000)
                labels = np.r_[np.zeros(len(in_nll)), np.ones(len(nll))]
                typicality_in, typicality_out = np.abs(in_pct - 50), np.abs(pct - 50)
                rows[name] = {
                    "images": len(images),
                    "refused": refused,
                    "median_nll": float(np.median(nll)),
                    "auroc_nll": float(roc_auc_score(labels, np.r_[in_nll, nll])),
                    "median_llr": float(np.median(llr)),
                    "auroc_two_sided": float(roc_auc_score(labels, np.r_[typicality_in, typicality_out])),
                    "auroc_ratio": float(roc_auc_score(labels, -np.r_[in_llr, llr])),
                    "flagged_upper": float(flagged(pct, args.threshold, "upper").mean()),
                    "flagged_two_sided": float(flagged(pct, args.threshold, "two-sided").mean()),
                    "flagged_ratio": float(flagged(llr_pct, args.threshold, "ratio").mean()),
                }
                print(mode, name, json.dumps(rows[name]), file=sys.stderr, flush=True)
            result["modes"][mode] = rows
    result["seconds"] = round(time.time() - start, 1)
    emit(result, args.out)


if __name__ == "__main__":
    main()
