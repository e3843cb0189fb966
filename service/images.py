"""Image bytes -> model input (28x28 grayscale in [0, 1], white digit on black) and model output -> PNG."""

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIDE = 28  # MNIST images are 28x28
FIT = 20  # MNIST digits were fitted into a 20x20 box before centring
CENTRE = 14.0  # where MNIST put the centre of mass: (row, column) 13.5 to 14.5 in all 10,000 test digits
INK = 0.2  # a pixel brighter than this is ink, for bounding boxes and ink fractions

# normalize=auto passes a 28x28 upload through untouched when all of these hold (see looks_like_mnist); measured on
# the 10,000 MNIST test digits by bench/normalize_rule.py, which prints the distributions these bounds come from.
MAX_BACKGROUND = 0.1  # mean of the outermost ring of pixels (MNIST: at most 0.031)
BOX_SIDES = (16, 21)  # longest side of the ink's bounding box (MNIST: 17 to 20, 99.9% are 20; as JPEG up to 21)
MAX_BOX_OFFSET = 4.5  # distance of the box's centre from CENTRE, the larger of rows and columns (MNIST: 0 to 4.5)
MAX_MASS_OFFSET = 1.0  # the same for the centre of mass (MNIST: at most 0.5 by construction; as JPEG up to 0.78)
INK_FRACTION = (0.02, 0.4)  # share of ink pixels (MNIST: 0.043 to 0.361)
WORK_SIDE = 1024  # uploads are shrunk to fit WORK_SIDE x WORK_SIDE right after decoding: 4 MB as float32 at most


class ImageError(ValueError):
    """An upload that cannot become a model input; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodeLimits:
    """What an upload may be: its format (Pillow's names), its decoded size and its shape."""

    formats: tuple[str, ...]
    max_pixels: int
    max_aspect: float


def load_image(data: bytes, name: str, *, limits: DecodeLimits, invert: bool | None,
               normalize: bool | None) -> tuple[np.ndarray, dict[str, bool]]:
    """Decode one upload into a (28, 28) float32 array in [0, 1] and what was done to it (see `preprocess`)."""
    gray = decode_gray(data, name, limits)
    return preprocess(np.asarray(gray, np.float32) / 255.0, invert, normalize)


def decode_gray(data: bytes, name: str, limits: DecodeLimits) -> Image.Image:
    """The upload's first frame as 8-bit grayscale, its longer side at most WORK_SIDE.

    Memory is bounded before anything is decoded: only the allowed formats' parsers see the bytes, the declared size
    is checked (after a JPEG's draft, which decodes at 1/2 to 1/8 scale), and the decoded image is shrunk before any
    copy (grayscale, alpha, arrays) is made. Every failure is an ImageError: Pillow's decoders raise many types
    (ValueError, SyntaxError, struct.error, NotImplementedError, IndexError...) on malformed files."""
    if not data:
        raise ImageError(f"file {name!r} is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=limits.formats)  # reads the header only
    except Image.DecompressionBombError as err:
        raise ImageError(f"file {name!r} is a decompression bomb: {err}", 413) from None
    except UnidentifiedImageError:  # the error text only repeats this, naming a BytesIO object
        raise ImageError(_unidentified(data, name, limits.formats)) from None
    except Exception as err:
        raise ImageError(f"file {name!r} has a malformed {_sniff(data) or 'image'} header: {_describe(err)}") from None
    kind = image.format or "image"
    try:
        width, height = image.size
        if min(width, height) < 1 or max(width, height) > limits.max_aspect * min(width, height):
            raise ImageError(f"file {name!r} ({kind}) is {width}x{height} pixels: the longer side may be at most "
                             f"{limits.max_aspect:g} times the shorter")
        image.draft("L", (WORK_SIDE // 4, WORK_SIDE // 4))  # JPEG only: a 12 MP photo decodes at 1/8 scale
        if image.width * image.height > limits.max_pixels:
            raise ImageError(f"file {name!r} ({kind}) is {width}x{height} pixels, over the limit of "
                             f"{limits.max_pixels} (VAE_MAX_IMAGE_PIXELS)", 413)
        image.seek(0)  # first frame of an animation
        image.load()
        if max(image.size) > WORK_SIDE:
            image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
        return _grayscale(image)
    except ImageError:
        raise
    except Exception as err:  # MemoryError included: a size within the limits cannot need much
        raise ImageError(f"file {name!r} ({kind}) could not be decoded: {_describe(err)}") from None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _sniff(data: bytes) -> str | None:
    """The format Pillow recognises from the first bytes, allowed or not (for a clearer message)."""
    prefix = data[:16]
    for format_id in Image.ID:
        accept = Image.OPEN[format_id][1]
        try:
            if accept is not None and accept(prefix):
                return format_id
        except Exception:  # an accept function choking on a short prefix
            continue
    return None


def _unidentified(data: bytes, name: str, formats: tuple[str, ...]) -> str:
    accepted = ", ".join(formats)
    sniffed = _sniff(data)
    if sniffed is not None and sniffed not in formats:
        return f"file {name!r} is a {sniffed} image; the accepted formats are {accepted} (VAE_IMAGE_FORMATS)"
    if sniffed is not None:
        return f"file {name!r} looks like {sniffed} but its header is malformed"
    return f"file {name!r} is not an image in an accepted format ({accepted})"


def _grayscale(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white paper, so dark strokes on a transparent canvas read as ink.
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    return image.convert("L")


def _border_mean(pixels: np.ndarray) -> float:
    return float(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).mean())


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    if pixels.shape == (height, width):
        return pixels
    image = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(image, np.float32), 0.0, 1.0)


def _fit_square(pixels: np.ndarray) -> np.ndarray:
    """Resize so the longer side is 28, keeping the aspect ratio, then pad with background to 28x28. (Resizing
    first: padding a 200000x1 upload to a square first would allocate 160 GB.)"""
    height, width = pixels.shape
    scale = SIDE / max(height, width)
    pixels = _resize(pixels, max(1, round(width * scale)), max(1, round(height * scale)))
    height, width = pixels.shape
    out = np.zeros((SIDE, SIDE), np.float32)
    top, left = (SIDE - height) // 2, (SIDE - width) // 2
    out[top:top + height, left:left + width] = pixels
    return out


def preprocess(pixels: np.ndarray, invert: bool | None, normalize: bool | None) -> tuple[np.ndarray, dict[str, bool]]:
    """Grayscale pixels in [0, 1] of any size -> the (28, 28) model input and {"inverted", "normalized"}.

    invert=None (auto) inverts a light background (the outermost ring of pixels brighter than 0.5 on average).
    normalize=None (auto) applies `mnist_normalize` unless the (possibly inverted) image already looks like an
    MNIST digit (`looks_like_mnist`), so MNIST digits pass through untouched and any other picture of a digit is
    cropped, scaled and centred the way MNIST's were. normalize=False only fits the whole image into 28x28."""
    inverted = _border_mean(pixels) > 0.5 if invert is None else invert
    if inverted:
        pixels = 1.0 - pixels
    normalized = not looks_like_mnist(pixels) if normalize is None else normalize
    pixels = mnist_normalize(pixels) if normalized else _fit_square(pixels)
    return pixels, {"inverted": bool(inverted), "normalized": bool(normalized)}


def mnist_features(pixels: np.ndarray) -> dict[str, Any]:
    """What looks_like_mnist checks, for an image of any size (offsets are from CENTRE, in pixels; a blank image
    has no box: its side is 0 and its offsets infinite)."""
    rows, cols = np.nonzero(pixels > INK)
    features = {"background": _border_mean(pixels), "ink_fraction": rows.size / pixels.size}
    if rows.size == 0:
        return features | {"box_side": 0, "box_offset": math.inf, "mass_offset": math.inf}
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    total = pixels.sum()
    mass_row = pixels.sum(axis=1) @ np.arange(pixels.shape[0]) / total
    mass_col = pixels.sum(axis=0) @ np.arange(pixels.shape[1]) / total
    return features | {
        "box_side": int(max(bottom - top, right - left)) + 1,
        "box_offset": float(max(abs((top + bottom) / 2 - CENTRE), abs((left + right) / 2 - CENTRE))),
        "mass_offset": float(max(abs(mass_row - CENTRE), abs(mass_col - CENTRE))),
    }


def looks_like_mnist(pixels: np.ndarray) -> bool:
    """Whether white-on-black grayscale pixels already look like an MNIST digit, so that normalize=auto leaves them
    as they are: 28x28, a dark background, a digit box as large and as centred as MNIST's, the centre of mass where
    MNIST put it, and a plausible amount of ink.

    The bounds (module constants) are MNIST's measured ranges with a little room (bench/normalize_rule.py): all
    10,000 MNIST test digits pass, and of the first 2,000 also all as JPEG (quality 75) and all inverted, while none
    of those 2,000 pass once moved by 3 pixels, shrunk to 60% (or to 70% in a corner) or enlarged to 140%, and 1 of
    400 digits drawn anywhere at any size on a 28x28 canvas does. Other sizes are never MNIST digits."""
    if pixels.shape != (SIDE, SIDE):
        return False
    features = mnist_features(pixels)
    return (features["background"] <= MAX_BACKGROUND
            and BOX_SIDES[0] <= features["box_side"] <= BOX_SIDES[1]
            and features["box_offset"] <= MAX_BOX_OFFSET
            and features["mass_offset"] <= MAX_MASS_OFFSET
            and INK_FRACTION[0] <= features["ink_fraction"] <= INK_FRACTION[1])


def mnist_normalize(pixels: np.ndarray, ink_threshold: float = INK) -> np.ndarray:
    """MNIST's recipe: levels (paper 0, the strongest ink 1), crop to the digit, fit it into 20x20 keeping its
    aspect, put its centre of mass at CENTRE in 28x28.

    Levels as in MNIST, where every test digit has a pixel of 254 or 255: the paper (the median pixel: most of a
    picture of a digit is paper) becomes 0 and the strongest ink 1, before cropping (grey paper in a photo is not
    ink) and again after fitting (a thin stroke that shrinking turned grey is ink at full strength)."""
    sample = pixels.ravel()[::1 + pixels.size // 2**20]  # a median of a million pixels is as good as of all of them
    background = float(np.median(sample))
    contrast = float(pixels.max()) - background
    if contrast <= ink_threshold:
        return _fit_square(pixels)  # blank image: nothing to centre
    pixels = np.clip((pixels - background) / contrast, 0.0, 1.0)
    rows, cols = np.nonzero(pixels > ink_threshold)
    digit = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = digit.shape
    scale = FIT / max(height, width)
    digit = _resize(digit, max(1, round(width * scale)), max(1, round(height * scale)))
    digit = digit / digit.max()
    height, width = digit.shape
    total = digit.sum()
    cy = (digit.sum(axis=1) @ np.arange(height)) / total
    cx = (digit.sum(axis=0) @ np.arange(width)) / total
    top = min(max(round(CENTRE - cy), 0), SIDE - height)
    left = min(max(round(CENTRE - cx), 0), SIDE - width)
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top:top + height, left:left + width] = digit
    return out


def rows_png(images: np.ndarray) -> bytes:
    """(R, C, 28, 28[, 1]) in [0, 1] -> a PNG of R rows of C images (a strip for R = 1)."""
    rows, cols = images.shape[:2]
    grid = images.reshape(rows, cols, SIDE, SIDE).transpose(0, 2, 1, 3).reshape(rows * SIDE, cols * SIDE)
    buffer = io.BytesIO()
    Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def to_png(images: np.ndarray) -> bytes:
    """(B, 28, 28[, 1]) in [0, 1] -> PNG bytes: the image itself for B=1, else a grid of ceil(sqrt(B)) columns."""
    images = images.reshape(len(images), SIDE, SIDE)
    grid = np.zeros(grid_shape(len(images)), np.float32)
    cols = grid.shape[1] // SIDE
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * SIDE:(r + 1) * SIDE, c * SIDE:(c + 1) * SIDE] = image
    buffer = io.BytesIO()
    Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_shape(count: int) -> tuple[int, int]:
    """(height, width) in pixels of the PNG grid `to_png` draws for `count` images."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols) * SIDE, cols * SIDE
