"""Measure the `normalize=auto` rule: which uploads pass through untouched and which are MNIST-normalised.

    python bench/normalize_rule.py --data-dir ../shared/data/mnist --out bench/results/normalize_rule.json

Prints JSON with, for each set of images, the distribution (percentiles) of every feature `looks_like_mnist` checks
and the share of images it passes through untouched:

- `mnist`: the 10,000 MNIST test digits as given (what a PNG of one decodes to), the set the bounds are chosen on;
  `mnist_inverted` (dark on light) and `mnist_jpeg` (saved as JPEG, quality 75) go through the upload path.
- 28x28 images that are not MNIST-shaped: MNIST digits moved 3 pixels, shrunk to 60%, enlarged to 140%, shrunk to
  70% in a corner, and digits drawn with Pillow on a 28x28 light canvas anywhere, at any size.
- `drawn_large`: digits drawn with Pillow on larger light canvases (tests/service/drawing.py), PNG and JPEG. They
  are never 28x28, so auto always normalises them; their features are those of the squeezed 28x28 image that
  normalize=false makes of them.

With the model (`--model-dir`), also the pixel correlation between the decoder's probabilities and the model input,
for reconstructions of drawn digits with normalize=auto and normalize=false (both against the normalised input, the
digit as MNIST would show it) and of MNIST test digits: the figure the upload tests' threshold is chosen from.
"""

import argparse
import gzip
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import emit  # noqa: E402

from service.api.v1 import preprocess as images  # noqa: E402
from service.api.v1.decode_pool import load_image  # noqa: E402
from service.api.v1.decoding import DecodeLimits  # noqa: E402
from service.api.v1.preprocess import SIDE, looks_like_mnist, mnist_features, preprocess  # noqa: E402
from tests.service.drawing import draw_digit, drawn_digits, encoded  # noqa: E402

PERCENTILES = [0, 0.1, 0.5, 1, 5, 50, 95, 99, 99.5, 99.9, 100]
FEATURES = ("background", "box_side", "box_offset", "mass_offset", "ink_fraction")


def read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    count, rows, cols = np.frombuffer(data, ">i4", 3, offset=4)
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def share(flags) -> float:
    return round(float(np.mean(list(flags))), 5)


def summary(images: list[np.ndarray], passed: list[bool]) -> dict:
    """Percentiles of each feature over 28x28 images (blank ones have no box: left out of the box figures)."""
    features = [mnist_features(image) for image in images]
    out = {"count": len(images), "passed_untouched": share(passed)}
    for name in FEATURES:
        values = np.array([f[name] for f in features], np.float64)
        values = values[np.isfinite(values)]
        out[name] = dict(zip(map(str, PERCENTILES), np.percentile(values, PERCENTILES).round(4).tolist(), strict=True))
    return out


def upload(data: bytes, normalize: bool | None) -> tuple[np.ndarray, dict]:
    return load_image(data, "bench", limits=DecodeLimits(("PNG", "JPEG"), 25_000_000, 1000), invert=None,
                      normalize=normalize)


def png(pixels: np.ndarray, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format=format, **params)
    return buffer.getvalue()


def scaled(digit: np.ndarray, factor: float, corner: bool = False) -> np.ndarray:
    """A 28x28 MNIST digit resized by `factor` around its centre (or into the top-left corner), cropped to 28x28."""
    size = round(SIDE * factor)
    image = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.LANCZOS), np.float32).clip(0, 1)
    out = np.zeros((max(size, SIDE),) * 2, np.float32)
    at = 0 if corner else (len(out) - size) // 2
    out[at:at + size, at:at + size] = image
    start = (len(out) - SIDE) // 2
    return out[start:start + SIDE, start:start + SIDE]


def shifted(digit: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros_like(digit)
    src = digit[max(0, -rows):SIDE - max(0, rows), max(0, -cols):SIDE - max(0, cols)]
    out[max(0, rows):max(0, rows) + src.shape[0], max(0, cols):max(0, cols) + src.shape[1]] = src
    return out


def drawn_small(count: int, seed: int) -> list[np.ndarray]:
    """Digits drawn straight onto a 28x28 light canvas, anywhere and at any size (a user's tiny drawing)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        height = int(rng.integers(8, 28))
        width = int(height * rng.uniform(0.4, 0.8))
        left, top = int(rng.integers(0, SIDE - width + 1)), int(rng.integers(0, SIDE - height + 1))
        box = (left, top, left + width, top + height)
        image = draw_digit("0127"[i % 4], (SIDE, SIDE), box, int(rng.integers(1, 4)))
        out.append(upload(encoded(image, "PNG"), False)[0])  # inverted (light canvas), not normalised
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the pixels of each pair of images, (N, 28, 28) x (N, 28, 28) -> (N,)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def percentiles(values: np.ndarray) -> dict:
    return dict(zip(map(str, PERCENTILES), np.percentile(values, PERCENTILES).round(4).tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--drawn", type=int, default=400, help="drawn digits per set")
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "mnist_vae" / "1",
                        help="the SavedModel for the reconstruction figures; 'none' skips them")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    mnist = read_idx_images(args.data_dir / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255
    rule = {name: getattr(images, name) for name in ("INK", "CENTRE", "MAX_BACKGROUND", "BOX_SIDES", "MAX_BOX_OFFSET",
                                                       "MAX_MASS_OFFSET", "INK_FRACTION")}
    results = {"rule": rule, "sets": {}}
    sets = results["sets"]

    def measure(name: str, images: list[np.ndarray], passed: list[bool] | None = None) -> None:
        sets[name] = summary(images, [looks_like_mnist(image) for image in images] if passed is None else passed)

    measure("mnist", list(mnist))
    first = mnist[:2000]
    # 28x28 uploads: auto passes through exactly those whose (inverted) pixels look like MNIST.
    measure("mnist_inverted", [upload(png(1 - digit), False)[0] for digit in first])
    measure("mnist_jpeg", [upload(png(digit, "JPEG", quality=75), False)[0] for digit in first])
    moves = [(3, 0), (-3, 0), (0, 3), (0, -3), (3, 3), (-3, -3), (3, -3), (-3, 3)]
    measure("mnist_moved_3px", [shifted(digit, *moves[i % 8]) for i, digit in enumerate(first)])
    measure("mnist_shrunk_60pct", [scaled(digit, 0.6) for digit in first])
    measure("mnist_enlarged_140pct", [scaled(digit, 1.4) for digit in first])
    measure("mnist_shrunk_70pct_corner", [scaled(digit, 0.7, corner=True) for digit in first])
    measure("drawn_28x28", drawn_small(args.drawn, seed=1))

    drawings = drawn_digits(args.drawn, seed=2)
    uploads = [encoded(image, "JPEG" if i % 2 else "PNG") for i, (_, image) in enumerate(drawings)]
    squeezed = [upload(data, False)[0] for data in uploads]
    normalised = [upload(data, None) for data in uploads]
    sets["drawn_large"] = summary(squeezed, [not r["normalized"] for _, r in normalised])
    sets["drawn_large"]["passed_if_squeezed_to_28x28"] = share(looks_like_mnist(x) for x in squeezed)
    sets["drawn_large"]["normalised_output_passes"] = share(looks_like_mnist(x) for x, _ in normalised)

    # Normalising an MNIST digit again is not the identity (faint pixels outside the ink's box are cropped, a digit
    # whose box is under 20 is enlarged): why auto passes MNIST digits through instead.
    renormalised = np.stack([preprocess(digit, False, True)[0] for digit in first])
    changed = np.abs(renormalised - first).max(axis=(1, 2)) > 1e-6
    results["normalize_true_changes_mnist"] = share(changed)

    if str(args.model_dir) != "none":
        import tensorflow as tf

        reconstruct = tf.saved_model.load(str(args.model_dir)).signatures["reconstruct"]

        def probs(images: np.ndarray) -> np.ndarray:
            return reconstruct(images=tf.constant(images[..., None], tf.float32))["probs"].numpy()[..., 0]

        auto_inputs = np.stack([x for x, _ in normalised])
        squeezed = np.stack(squeezed)
        results["reconstruction_correlation"] = {
            "drawn_large_auto": percentiles(correlation(probs(auto_inputs), auto_inputs)),
            "drawn_large_false_vs_normalised_input": percentiles(correlation(probs(squeezed), auto_inputs)),
            "drawn_large_false_vs_own_input": percentiles(correlation(probs(squeezed), squeezed)),
            "mnist_first_2000": percentiles(correlation(probs(first), first)),
        }
    emit(results, args.out)


if __name__ == "__main__":
    main()
