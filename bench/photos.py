"""Photos of digits: how the upload preprocessing reads them, before (the preprocessing of commit 6cae52c, copied
below as `baseline_preprocess`) and after (service.api.v1.preprocess), and which per-image signal tells a digit the
model understood from one it did not.

    python bench/photos.py --data-dir ../shared/data/mnist --out bench/results/photos.json
    python bench/photos.py --write-test-set tests/data/photos      # the small set the tests read
    python bench/photos.py --costs-only --out bench/results/photos_cost.json

Prints JSON. Every picture is generated here (nothing is read but MNIST and the fonts on the machine), encoded as an
upload (JPEG for photos, PNG otherwise) and sent through the service's own upload path (decode_gray, then the
preprocessing). Styles (`--count` pictures each; digits from MNIST's *test* set or typed in a random DejaVu face,
with random placement, size, rotation, light, blur, noise and JPEG quality):

- photo_print, photo_hand: a typed or an MNIST (handwritten) digit printed onto paper texture, photographed: uneven
  light (gradient, vignette, sometimes a soft shadow), a little perspective, blur, sensor noise, JPEG 35-90.
- photo_shading: the same with a strong shading gradient (paper from 25% to 95% of full light across the picture).
- photo_colour: coloured ink on coloured paper, otherwise as photo_print.
- photo_small: a small digit (8-20% of the picture's height) anywhere on the photo.
- photo_desk: the page's edge in the frame: a dark desk beyond a slanted line along one or two sides (3-12% deep),
  the digit (typed or MNIST) on the page's middle 70%.
- drawn: digits drawn with Pillow like a user of a paint program (tests/service/drawing.py).
- hand_clean: MNIST test digits enlarged onto a clean light canvas anywhere, some rotated by up to 20 degrees.
- font_clean: typed digits on clean white or coloured paper, PNG.
- mnist_png: MNIST test digits as 28x28 PNG uploads (must pass untouched).
- bad_blank, bad_noise, bad_texture: blank photographed paper, uniform noise, textures (no digit): each should
  be refused (422) or get a "not understood" verdict.

Per style, before and after: the share read as their digit (a 10-nearest-neighbour majority vote, Euclidean, over
the latent means of MNIST's 60,000 training digits, on the highest model version present unless --version), the
mean correlation between the model's input and its reconstruction (decoder probabilities at the posterior mean),
the share refused (422), and the cost of the preprocessing (p50/p99, for a 4 MP photo and a 28x28 digit).

Verdict candidates, measured on every picture that reached the model, by how well they separate the pictures
read as their digit (plus MNIST) from those misread or without a digit (AUROC) and their cost per image: the
calibrated IWAE NLL percentile of the score signature (k = the calibration's), the likelihood ratio against the
background model, the one-decode negative ELBO at the posterior mean (KL + distortion), the KL alone (encode only).
"""

import argparse
import gzip
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from report import emit  # noqa: E402

from service.api.v1 import preprocess as current  # noqa: E402
from service.api.v1.decoding import DecodeLimits, ImageError, decode_gray  # noqa: E402
from tests.service.drawing import drawn_digits  # noqa: E402

LIMITS = DecodeLimits(("PNG", "JPEG"), 25_000_000, 20)
FONTS = sorted(str(p) for p in Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf") if "Math" not in p.name)
PHOTO_SIZES = [(1024, 768), (768, 1024), (960, 720), (800, 800)]  # what decode_gray leaves of a phone photo


# --- the preprocessing before this work (service/images.py at 6cae52c), for the "before" figures -------------------

def baseline_preprocess(pixels: np.ndarray) -> np.ndarray:
    """normalize=auto, invert=auto as they were: invert a light border, pass an MNIST-like 28x28 image untouched,
    otherwise levels (median paper 0, strongest ink 1), crop at 0.2, fit into 20x20, centre the mass."""
    if current._border_mean(pixels) > 0.5:
        pixels = 1.0 - pixels
    if current.looks_like_mnist(pixels):
        return pixels
    sample = pixels.ravel()[::1 + pixels.size // 2**20]
    background = float(np.median(sample))
    contrast = float(pixels.max()) - background
    if contrast <= 0.2:
        return current._fit_square(pixels)
    pixels = np.clip((pixels - background) / contrast, 0.0, 1.0)
    rows, cols = np.nonzero(pixels > 0.2)
    digit = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = digit.shape
    scale = 20 / max(height, width)
    digit = current._resize(digit, max(1, round(width * scale)), max(1, round(height * scale)))
    digit = digit / digit.max()
    height, width = digit.shape
    total = digit.sum()
    cy = (digit.sum(axis=1) @ np.arange(height)) / total
    cx = (digit.sum(axis=0) @ np.arange(width)) / total
    top = min(max(round(14.0 - cy), 0), 28 - height)
    left = min(max(round(14.0 - cx), 0), 28 - width)
    out = np.zeros((28, 28), np.float32)
    out[top:top + height, left:left + width] = digit
    return out


# --- data ---------------------------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    if data[3] == 3:
        count, rows, cols = np.frombuffer(data, ">i4", 3, offset=4)
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


def encoded(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


# --- the photo generator ------------------------------------------------------------------------------------------

def smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a few random values per side, enlarged smoothly."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((width, height), Image.Resampling.BICUBIC)) / 1.5


def illumination(rng, height: int, width: int, strong: bool) -> np.ndarray:
    """Light falling on the paper, in (0, 1]: a gradient, a vignette, sometimes a soft shadow's edge."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height - 0.5, x / width - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    ramp = x * math.cos(angle) + y * math.sin(angle)  # about -0.7 .. 0.7
    if strong:
        low = rng.uniform(0.25, 0.45)
        light = low + (0.95 - low) * (ramp - ramp.min()) / (ramp.max() - ramp.min())
    else:
        light = 0.85 + rng.uniform(0.1, 0.35) * ramp
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    light = light * (1 - rng.uniform(0.1, 0.4) * ((x - cx) ** 2 + (y - cy) ** 2))
    if rng.random() < 0.35:  # a phone's or a hand's shadow: a darker half-plane with a soft edge
        angle = rng.uniform(0, 2 * math.pi)
        side = x * math.cos(angle) + y * math.sin(angle) - rng.uniform(0.3, 0.45)
        light = light * (1 - rng.uniform(0.2, 0.45) / (1 + np.exp(-side / rng.uniform(0.02, 0.08))))
    return np.clip(light, 0.05, 1.0)


def typed_ink(rng, digit: int, height: int) -> np.ndarray:
    """A digit typed in a random DejaVu face, `height` pixels tall, as ink coverage in [0, 1] (tight box)."""
    font = ImageFont.truetype(FONTS[rng.integers(len(FONTS))], size=height)
    canvas = Image.new("L", (height * 2, height * 2), 0)
    ImageDraw.Draw(canvas).text((height // 2, height // 4), str(digit), fill=255, font=font)
    return np.asarray(canvas.crop(canvas.getbbox()), np.float32) / 255


def hand_ink(digit: np.ndarray, height: int, rng) -> np.ndarray:
    """An MNIST digit (28x28 uint8) enlarged to `height` pixels and sharpened like a pen stroke (tight box)."""
    image = Image.fromarray(digit)
    image = image.crop(image.getbbox())
    width = max(1, round(image.width * height / image.height))
    big = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    edge = rng.uniform(0.25, 0.45)
    return np.clip((big - edge) / 0.2, 0, 1)


def rotated(ink: np.ndarray, degrees: float) -> np.ndarray:
    image = Image.fromarray(ink, "F").rotate(degrees, Image.Resampling.BILINEAR, expand=True)
    pixels = np.asarray(image)
    rows, cols = np.nonzero(pixels > 0.02)
    return pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def place(ink: np.ndarray, height: int, width: int, rng) -> np.ndarray:
    """`ink` pasted into a (height, width) coverage map, at random (anywhere it fits; shrunk to fit first)."""
    fit = min(0.95 * height / ink.shape[0], 0.95 * width / ink.shape[1])
    if fit < 1:
        size = (max(1, int(ink.shape[1] * fit)), max(1, int(ink.shape[0] * fit)))
        ink = np.asarray(Image.fromarray(ink, "F").resize(size, Image.Resampling.BOX))
    out = np.zeros((height, width), np.float32)
    spare_y, spare_x = height - ink.shape[0], width - ink.shape[1]
    top, left = int(rng.integers(spare_y + 1)), int(rng.integers(spare_x + 1))
    out[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    return out


def perspective(image: Image.Image, margin: int, rng, amount: float) -> Image.Image:
    """A slight perspective: the frame a camera sees of a page `margin` pixels larger than the picture on every
    side, each corner of the frame falling up to `amount` of a side away from where a square-on camera would see
    it (the frame stays on the page)."""
    width, height = image.width - 2 * margin, image.height - 2 * margin
    rows, target = [], []
    for x, y in [(0, 0), (width, 0), (width, height), (0, height)]:  # output corner -> input point
        u = x + margin + rng.uniform(-amount, amount) * width
        v = y + margin + rng.uniform(-amount, amount) * height
        rows += [[x, y, 1, 0, 0, 0, -x * u, -y * u], [0, 0, 0, x, y, 1, -x * v, -y * v]]
        target += [u, v]
    coeffs = np.linalg.solve(np.array(rows, np.float64), np.array(target, np.float64))
    return image.transform((width, height), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.Resampling.BILINEAR)


def photograph(ink: np.ndarray, rng, *, strong_light: bool = False, paper_rgb=None, ink_rgb=None,
               quality: int | None = None, desk: bool = False) -> bytes:
    """Ink coverage (height, width) printed on textured paper, lit unevenly, photographed: perspective, blur, noise,
    JPEG. Returns the JPEG's bytes."""
    amount = rng.uniform(0.0, 0.05)
    margin = int(amount * max(ink.shape)) + 2
    ink = np.pad(ink, margin)
    height, width = ink.shape
    if paper_rgb is None:
        tone = rng.uniform(0.8, 1.0)
        paper_rgb = np.array([tone, tone * rng.uniform(0.96, 1.0), tone * rng.uniform(0.9, 1.0)], np.float32)
    if ink_rgb is None:
        dark = rng.uniform(0.05, 0.35)
        ink_rgb = np.array([dark, dark, dark * rng.uniform(1.0, 1.6)], np.float32).clip(0, 1)
    texture = 1 + 0.03 * smooth_noise(rng, height, width, 24) + 0.015 * rng.standard_normal((height, width))
    reflect = (paper_rgb[None, None] * (1 - ink[..., None]) + ink_rgb[None, None] * ink[..., None])
    if desk:  # the page's edge in the frame: a dark desk beyond a slanted line along one or two sides
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        wood = np.array([0.35, 0.22, 0.12], np.float32) * rng.uniform(0.4, 1.2)
        for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            depth = rng.uniform(0.03, 0.12) * (width if side < 2 else height) + margin
            slope = rng.uniform(-0.08, 0.08)
            along, across = (y, x) if side < 2 else (x, y)
            limit = depth + slope * (along - along.mean())
            beyond = (across < limit) if side in (0, 2) else (across > (across.max() - limit))
            reflect[beyond] = wood * (1 + 0.1 * rng.standard_normal(3)).astype(np.float32)
    light = illumination(rng, height, width, strong_light)
    exposure = rng.uniform(0.85, 1.0)
    rgb = reflect * (texture * light * exposure)[..., None]
    image = Image.fromarray(np.clip(rgb * 255, 0, 255).astype(np.uint8), "RGB")
    image = perspective(image, margin, rng, amount)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 2.0)))
    height, width = image.height, image.width
    pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 9), (height, width, 1))  # sensor noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return encoded(image, "JPEG", quality=int(quality or rng.integers(35, 91)))


def make_style(style: str, count: int, rng, mnist_x: np.ndarray, mnist_y: np.ndarray) -> list[tuple[int, bytes]]:
    """(label, upload bytes) pairs of a style; label -1 for pictures without a digit."""
    out = []
    for i in range(count):
        width, height = PHOTO_SIZES[rng.integers(len(PHOTO_SIZES))]
        j = int(rng.integers(len(mnist_x)))
        typed = int(rng.integers(10))
        degrees = float(rng.uniform(-15, 15)) if rng.random() < 0.5 else 0.0
        digit_height = int(rng.uniform(0.3, 0.75) * height)
        if style in ("photo_print", "photo_shading", "photo_colour"):
            ink = rotated(typed_ink(rng, typed, digit_height), degrees)
            kwargs = {"strong_light": style == "photo_shading"}
            if style == "photo_colour":
                kwargs["paper_rgb"] = rng.uniform(0.45, 1.0, 3).astype(np.float32)
                kwargs["ink_rgb"] = (kwargs["paper_rgb"] * rng.uniform(0.0, 0.45, 3)).astype(np.float32)
            out.append((typed, photograph(place(ink, height, width, rng), rng, **kwargs)))
        elif style == "photo_hand":
            ink = rotated(hand_ink(mnist_x[j], digit_height, rng), degrees)
            out.append((int(mnist_y[j]), photograph(place(ink, height, width, rng), rng)))
        elif style == "photo_desk":
            ink = rotated(typed_ink(rng, typed, digit_height) if i % 2 else hand_ink(mnist_x[j], digit_height, rng),
                          degrees)
            label = typed if i % 2 else int(mnist_y[j])
            inner_height, inner_width = int(height * 0.7), int(width * 0.7)  # the digit on the page, not the desk
            top, left = (height - inner_height) // 2, (width - inner_width) // 2
            page = np.zeros((height, width), np.float32)
            page[top:top + inner_height, left:left + inner_width] = place(ink, inner_height, inner_width, rng)
            out.append((label, photograph(page, rng, desk=True)))
        elif style == "photo_small":
            small = int(rng.uniform(0.08, 0.2) * height)
            ink = hand_ink(mnist_x[j], small, rng) if i % 2 else typed_ink(rng, typed, small)
            label = int(mnist_y[j]) if i % 2 else typed
            out.append((label, photograph(place(ink, height, width, rng), rng)))
        elif style == "hand_clean":
            size = [(400, 300), (300, 400), (640, 480), (256, 256)][rng.integers(4)]
            ink = rotated(hand_ink(mnist_x[j], int(rng.uniform(0.3, 0.8) * size[1]), rng),
                          float(rng.uniform(-20, 20)) if rng.random() < 0.5 else 0.0)
            paper = rng.uniform(0.85, 1.0)
            pixels = paper * (1 - place(ink, size[1], size[0], rng) * rng.uniform(0.8, 1.0))
            out.append((int(mnist_y[j]), encoded(Image.fromarray((pixels * 255).astype(np.uint8)), "PNG")))
        elif style == "font_clean":
            size = [(400, 300), (300, 400), (256, 256)][rng.integers(3)]
            ink = rotated(typed_ink(rng, typed, int(rng.uniform(0.3, 0.8) * size[1])), degrees)
            paper = rng.uniform(0.6, 1.0, 3) if rng.random() < 0.5 else np.ones(3)
            tint = paper * rng.uniform(0.0, 0.4, 3)
            cover = place(ink, size[1], size[0], rng)[..., None]
            rgb = paper[None, None] * (1 - cover) + tint[None, None] * cover
            out.append((typed, encoded(Image.fromarray((rgb * 255).astype(np.uint8), "RGB"), "PNG")))
        elif style == "mnist_png":
            out.append((int(mnist_y[j]), encoded(Image.fromarray(mnist_x[j]), "PNG")))
        elif style == "bad_blank":
            out.append((-1, photograph(np.zeros((height, width), np.float32), rng)))
        elif style == "bad_noise":
            noise = rng.integers(0, 256, (height // 2, width // 2), dtype=np.uint8)
            out.append((-1, encoded(Image.fromarray(noise), "PNG")))
        elif style == "bad_texture":
            kind = i % 3
            if kind == 0:  # blotches: low-frequency noise, thresholded
                cover = (smooth_noise(rng, height, width, int(rng.integers(6, 30))) > 0.3).astype(np.float32)
            elif kind == 1:  # stripes or a grid
                y, x = np.mgrid[0:height, 0:width]
                period = rng.uniform(15, 60)
                cover = (np.sin((x * math.cos(degrees) + y * math.sin(degrees)) * 2 * math.pi / period) > 0.6)
                cover = cover.astype(np.float32)
            else:  # fabric-like: fine noise over a coarse one
                cover = np.clip(0.5 + 0.5 * smooth_noise(rng, height, width, 60)
                                + 0.3 * rng.standard_normal((height, width)), 0, 1).astype(np.float32)
            out.append((-1, photograph(cover, rng)))
        else:
            raise ValueError(style)
    return out


STYLES = ("photo_print", "photo_hand", "photo_shading", "photo_colour", "photo_small", "photo_desk", "drawn",
          "hand_clean",
          "font_clean", "mnist_png", "bad_blank", "bad_noise", "bad_texture")
PHOTO_STYLES = ("photo_print", "photo_hand", "photo_shading", "photo_colour", "photo_small", "photo_desk")


def pictures(style: str, count: int, seed: int, mnist_x, mnist_y) -> list[tuple[int, bytes]]:
    if style == "drawn":
        return [(int(d), encoded(image, "PNG")) for d, image in drawn_digits(count, seed)]
    return make_style(style, count, np.random.default_rng([seed, STYLES.index(style)]), mnist_x, mnist_y)


# --- the model ----------------------------------------------------------------------------------------------------

class Model:
    def __init__(self, model_dir: Path):
        import json

        import tensorflow as tf
        self.tf = tf
        self.root = tf.saved_model.load(str(model_dir))
        self.metadata = json.loads((model_dir / "metadata.json").read_text())

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.root.signatures["encode"](images=self.tf.constant(x)).items()}

    def reconstruct(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.root.signatures["reconstruct"](images=self.tf.constant(x)).items()}

    def score(self, x: np.ndarray, k: int) -> dict[str, np.ndarray]:
        tf = self.tf
        out = self.root.signatures["score"](images=tf.constant(x), k=tf.constant(k, tf.int32),
                                            seeds=tf.constant(np.arange(len(x), dtype=np.int64)))
        return {name: value.numpy() for name, value in out.items()}


def train_latents(model: Model, data_dir: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Latent means and labels of MNIST's 60,000 training digits, encoded once and cached."""
    if cache.is_file():
        stored = np.load(cache)
        return stored["mean"], stored["label"]
    x = read_idx(data_dir / "train-images-idx3-ubyte.gz").astype(np.float32)[..., None] / 255
    labels = read_idx(data_dir / "train-labels-idx1-ubyte.gz")
    means = np.concatenate([model.encode(x[i:i + 1000])["mean"] for i in range(0, len(x), 1000)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mean=means, label=labels)
    return means, labels


def knn_read(queries: np.ndarray, means: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """The majority digit among the k nearest training latent means (Euclidean); ties to the nearest's digit."""
    out = np.empty(len(queries), np.int64)
    square = (means ** 2).sum(axis=1)
    for start in range(0, len(queries), 256):
        q = queries[start:start + 256]
        distance = square[None] - 2 * q @ means.T
        nearest = np.argsort(distance, axis=1)[:, :k]
        for row, idx in enumerate(nearest):
            votes = np.bincount(labels[idx], minlength=10)
            winners = np.flatnonzero(votes == votes.max())
            out[start + row] = labels[idx[0]] if labels[idx[0]] in winners else winners[0]
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    denominator = np.sqrt((a ** 2).sum(axis=1) * (b ** 2).sum(axis=1))
    return np.where(denominator > 0, (a * b).sum(axis=1) / np.maximum(denominator, 1e-12), 0.0)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores higher than a negative), ties half."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    values = np.concatenate([positive, negative])
    ranks = np.argsort(np.argsort(values, kind="mergesort"), kind="mergesort").astype(np.float64) + 1
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    ranks = (sums / counts)[inverse]
    return float((ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2)
                 / (len(positive) * len(negative)))


def percentiles(values: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 3), "p99": round(float(np.percentile(values, 99)), 3)}


def timed(fn, repeats: int) -> np.ndarray:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def preprocess_cost(mnist_x: np.ndarray, repeats: int) -> dict:
    """ms per image, p50 and p99: a 4 MP photo (the whole upload path: JPEG decode at draft scale, grayscale,
    shrink, preprocess; and the preprocessing alone on the decoded pixels) and a 28x28 digit."""
    rng = np.random.default_rng(99)
    ink = hand_ink(mnist_x[0], 1000, rng)
    photo = photograph(place(ink, 1728, 2304, rng), rng, quality=90)  # 2304 x 1728 = 4.0 MP
    gray = np.asarray(decode_gray(photo, "photo", LIMITS), np.float32) / 255
    png = encoded(Image.open(io.BytesIO(photo)), "PNG")  # no JPEG draft: decoded in full, shrunk to 1024 x 768
    gray_png = np.asarray(decode_gray(png, "photo", LIMITS), np.float32) / 255
    digit = np.asarray(decode_gray(encoded(Image.fromarray(mnist_x[1]), "PNG"), "d", LIMITS), np.float32) / 255
    moved = np.roll(digit, 4, axis=1)  # not MNIST-like: normalised
    out = {"photo_4mp": {"decoded_shape": list(gray.shape), "jpeg_bytes": len(photo),
                         "png_decoded_shape": list(gray_png.shape), "png_bytes": len(png)}}
    for name, fn in {
        "photo_4mp_upload_after": lambda: current.preprocess(
            np.asarray(decode_gray(photo, "p", LIMITS), np.float32) / 255, None, None),
        "photo_4mp_upload_before": lambda: baseline_preprocess(
            np.asarray(decode_gray(photo, "p", LIMITS), np.float32) / 255),
        "photo_4mp_preprocess_after": lambda: current.preprocess(gray, None, None),
        "photo_4mp_preprocess_before": lambda: baseline_preprocess(gray),
        "photo_4mp_png_upload_after": lambda: current.preprocess(
            np.asarray(decode_gray(png, "p", LIMITS), np.float32) / 255, None, None),
        "photo_4mp_png_upload_before": lambda: baseline_preprocess(
            np.asarray(decode_gray(png, "p", LIMITS), np.float32) / 255),
        "photo_4mp_png_preprocess_after": lambda: current.preprocess(gray_png, None, None),
        "photo_4mp_png_preprocess_before": lambda: baseline_preprocess(gray_png),
        "digit_28_untouched_after": lambda: current.preprocess(digit, None, None),
        "digit_28_untouched_before": lambda: baseline_preprocess(digit),
        "digit_28_normalised_after": lambda: current.preprocess(moved, None, None),
        "digit_28_normalised_before": lambda: baseline_preprocess(moved),
    }.items():
        fn()
        out[name] = percentiles(timed(fn, repeats)) | {"unit": "ms"}
    return out


def library_cost(repeats: int) -> dict:
    """The cleaning's image operations on a 1024 x 768 image (the largest decode_gray leaves) in each library: shrink
    to 96, an opening of the service's size, a light blur, enlarge back, subtract, the full-size blur. Pillow and
    numpy (what the service uses), OpenCV and scikit-image if installed; ms."""
    from service.api.v1 import photo
    rng = np.random.default_rng(5)
    pixels = rng.random((768, 1024), dtype=np.float32)
    size, sigma = photo._opening_size(), 1024 / 800

    def with_pillow():
        photo.blur(pixels - photo.estimate_background(pixels), sigma)

    out = {"opening_size_at_96": size, "pillow_numpy": percentiles(timed(with_pillow, repeats))}
    try:
        import cv2

        def with_cv2():
            small = cv2.resize(pixels, (96, 72), interpolation=cv2.INTER_AREA)
            opened = cv2.morphologyEx(small, cv2.MORPH_OPEN, np.ones((size, size), np.uint8))
            back = cv2.resize(cv2.GaussianBlur(opened, (0, 0), 1.0), (1024, 768), interpolation=cv2.INTER_LINEAR)
            cv2.GaussianBlur(pixels - back, (0, 0), sigma)
        out["opencv"] = percentiles(timed(with_cv2, repeats)) | {"version": cv2.__version__}
    except ImportError:
        out["opencv"] = "not installed"
    try:
        import skimage
        from skimage import filters, morphology, transform

        def with_skimage():
            small = transform.resize(pixels, (72, 96), anti_aliasing=True)
            opened = morphology.opening(small, morphology.footprint_rectangle((size, size)))
            back = transform.resize(filters.gaussian(opened, 1.0), (768, 1024), order=1)
            filters.gaussian(pixels - back, sigma)
        out["scikit_image"] = percentiles(timed(with_skimage, repeats)) | {"version": skimage.__version__}
    except ImportError:
        out["scikit_image"] = "not installed"
    return out


def write_test_set(target: Path, mnist_x: np.ndarray, mnist_y: np.ndarray) -> None:
    """A dozen small photos (640 px) for the tests: name `<style>_<i>_<label>.jpg`, label x for no digit."""
    target.mkdir(parents=True, exist_ok=True)
    global PHOTO_SIZES
    PHOTO_SIZES = [(640, 480), (480, 640)]
    for style, count in (("photo_print", 3), ("photo_hand", 3), ("photo_shading", 3), ("photo_small", 1),
                         ("bad_blank", 2)):
        for i, (label, data) in enumerate(pictures(style, count, 7, mnist_x, mnist_y)):
            (target / f"{style}_{i}_{'x' if label < 0 else label}.jpg").write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--model-root", type=Path, default=REPO / "models" / "mnist_vae")
    parser.add_argument("--version", type=int, help="model version (default: the highest present)")
    parser.add_argument("--count", type=int, default=100, help="pictures per style")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50, help="timings per cost figure")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench_photos"))
    parser.add_argument("--write-test-set", type=Path)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--no-costs", action="store_true", help="skip the cost figures")
    parser.add_argument("--costs-only", action="store_true", help="only the cost figures (no model)")
    parser.add_argument("--out")
    args = parser.parse_args()

    mnist_x = read_idx(args.data_dir / "t10k-images-idx3-ubyte.gz")
    mnist_y = read_idx(args.data_dir / "t10k-labels-idx1-ubyte.gz")
    if args.write_test_set:
        write_test_set(args.write_test_set, mnist_x, mnist_y)
        return
    if args.costs_only:
        emit({"cost_ms": preprocess_cost(mnist_x, args.repeats),
              "background_step_by_library_ms": library_cost(args.repeats)}, args.out)
        return
    version = args.version or max(int(p.name) for p in args.model_root.iterdir() if p.name.isdigit())
    model = Model(args.model_root / str(version))
    means, labels = train_latents(model, args.data_dir, args.cache / f"v{version}_train_latents.npz")
    calibration = model.metadata.get("calibration")

    report = {"model_version": version, "count_per_style": args.count, "seed": args.seed, "styles": {}}
    rows = []  # per picture that reached the model: style, phase, correct, inputs
    for style in args.styles:
        items = pictures(style, args.count, args.seed, mnist_x, mnist_y)
        entry = {"count": len(items)}
        for phase in ("before", "after"):
            inputs, kept, refused, untouched = [], [], 0, 0
            for label, data in items:
                gray = np.asarray(decode_gray(data, style, LIMITS), np.float32) / 255
                if phase == "before":
                    x = baseline_preprocess(gray)
                else:
                    try:
                        x, done = current.preprocess(gray, None, None)
                    except ImageError as err:
                        assert err.status == 422, err
                        refused += 1
                        continue
                if style == "mnist_png":
                    untouched += bool(np.array_equal(x, gray))
                inputs.append(x)
                kept.append(label)
            figures = {"refused_422": refused}
            if inputs:
                x = np.stack(inputs)[..., None].astype(np.float32)
                rec = model.reconstruct(x)
                read = knn_read(rec["mean"], means, labels)
                truth = np.array(kept)
                corr = correlation(x, rec["probs"])
                if style.startswith("bad_"):
                    figures["reached_model"] = len(inputs)
                else:
                    figures["read_correctly"] = round(float(np.mean(read == truth)), 3)
                    figures["read_correctly_of_all"] = round(float(np.sum(read == truth) / len(items)), 3)
                figures["input_reconstruction_correlation"] = round(float(np.mean(corr)), 3)
                if style == "mnist_png":
                    figures["untouched"] = round(untouched / len(items), 3)
                rows.append((style, phase, read == truth if not style.startswith("bad_") else np.zeros(len(x), bool),
                             x))
            entry[phase] = figures
        report["styles"][style] = entry
        print(style, entry, file=sys.stderr)

    report["mnist_test_all_png"] = mnist_all(model, mnist_x, mnist_y, means, labels)
    print("mnist_test_all_png", report["mnist_test_all_png"], file=sys.stderr)
    for phase in ("before", "after"):
        photo_items = [report["styles"][s][phase] for s in PHOTO_STYLES if s in report["styles"]]
        report[f"photo_like_{phase}"] = round(float(np.mean([f.get("read_correctly_of_all", 0)
                                                             for f in photo_items])), 3) if photo_items else None
    report["verdict"] = verdict_study(model, rows, calibration)
    if not args.no_costs:
        report["cost_ms"] = preprocess_cost(mnist_x, args.repeats)
        report["background_step_by_library_ms"] = library_cost(args.repeats)
    emit(report, args.out)


def mnist_all(model: Model, mnist_x: np.ndarray, mnist_y: np.ndarray, means, labels) -> dict:
    """All 10,000 MNIST test digits as PNG uploads through the upload path (normalize=auto): how many pass
    untouched, and how many read as their digit."""
    inputs, untouched = [], 0
    for digit in mnist_x:
        gray = np.asarray(decode_gray(encoded(Image.fromarray(digit), "PNG"), "d", LIMITS), np.float32) / 255
        x, done = current.preprocess(gray, None, None)
        untouched += bool(np.array_equal(x, digit / np.float32(255)) and not done["normalized"])
        inputs.append(x)
    x = np.stack(inputs)[..., None]
    mean = np.concatenate([model.encode(x[i:i + 1000])["mean"] for i in range(0, len(x), 1000)])
    return {"count": len(x), "untouched": round(untouched / len(x), 4),
            "read_correctly": round(float(np.mean(knn_read(mean, means, labels) == mnist_y)), 4)}


def verdict_study(model: Model, rows, calibration) -> dict:
    """How well each candidate signal separates the model's successes from its failures, and its cost."""
    from service.api.v1 import verdict

    x = np.concatenate([r[3] for r in rows]).astype(np.float32)
    good = np.concatenate([r[2] for r in rows])
    style = np.concatenate([[r[0]] * len(r[3]) for r in rows])
    phase = np.concatenate([[r[1]] * len(r[3]) for r in rows])
    enc = model.encode(x)
    rec = model.reconstruct(x)
    k = calibration["k"] if calibration else 32
    nll = np.concatenate([model.score(x[i:i + 64], k)["nll"] for i in range(0, len(x), 64)])
    signals = verdict.signals(x, enc["mean"], enc["scale_tril"], rec["probs"])
    candidates = {
        "kl_encode_only": signals["kl"],
        "neg_elbo_at_mean_one_decode": signals["kl"] + signals["distortion"],
        "distortion_at_mean_one_decode": signals["distortion"],
        f"nll_iwae_k{k}_score": nll,
    }
    if calibration and calibration.get("background"):
        from contract.likelihood import log_ratio
        candidates["minus_llr_background"] = -log_ratio(nll, x[..., 0], calibration["background"])
    out = {"positives": "pictures read as their digit (any style, before or after)",
           "negatives": "pictures misread, and bad_* pictures that reached the model",
           "count": {"positives": int(good.sum()), "negatives": int((~good).sum())}, "auroc": {}}
    for name, values in candidates.items():
        out["auroc"][name] = round(auroc(-values[good], -values[~good]), 3)  # lower is better understood
    decided = verdict.verdict_batch(x, enc["mean"], enc["scale_tril"], rec["probs"], calibration)
    mnist = (style == "mnist_png") & (phase == "after")
    estimate = candidates["neg_elbo_at_mean_one_decode"]
    out["mnist_test_flagged_share"] = {
        "one_decode_estimate_vs_calibration": round(float(np.mean(verdict.percentile(estimate[mnist], calibration)
                                                                  > verdict.THRESHOLD)), 3),
        f"score_k{k}_vs_calibration": round(float(np.mean(verdict.percentile(nll[mnist], calibration)
                                                          > verdict.THRESHOLD)), 3),
        "mean_gap_nats_estimate_minus_nll": round(float(np.mean(estimate[mnist] - nll[mnist])), 2),
    }
    understood = np.array([d["understood"] for d in decided])
    out["understood_rule"] = {
        "true_positive_rate": round(float(understood[good].mean()), 3),
        "false_positive_rate": round(float(understood[~good].mean()), 3),
        "per_style_phase": {f"{s}/{p}": {"understood": round(float(understood[(style == s) & (phase == p)].mean()), 3),
                                         "read_correctly": round(float(good[(style == s) & (phase == p)].mean()), 3)}
                            for s, p in sorted(set(zip(style, phase, strict=True)))},
    }
    one = x[:1]
    out["cost_ms_per_call_of_one_image"] = {
        "encode": percentiles(timed(lambda: model.encode(one), 30)),
        "reconstruct": percentiles(timed(lambda: model.reconstruct(one), 30)),
        f"score_k{k}": percentiles(timed(lambda: model.score(one, k), 30)),
        "verdict_numpy": percentiles(timed(lambda: verdict.verdict_batch(one, enc["mean"][:1], enc["scale_tril"][:1],
                                                                        rec["probs"][:1], calibration), 200)),
    }
    batch = x[:64]
    out["cost_ms_per_call_of_64_images"] = {
        "encode": percentiles(timed(lambda: model.encode(batch), 10)),
        "reconstruct": percentiles(timed(lambda: model.reconstruct(batch), 10)),
        f"score_k{k}": percentiles(timed(lambda: model.score(batch, k), 5)),
    }
    return out


if __name__ == "__main__":
    main()
