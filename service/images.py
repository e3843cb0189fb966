"""Image bytes -> model input (28x28 grayscale in [0, 1], white digit on black) and model output -> PNG."""

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIDE = 28  # MNIST images are 28x28
FIT = 20  # MNIST digits were fitted into a 20x20 box before centring
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


def load_image(data: bytes, name: str, *, limits: DecodeLimits, invert: bool | None, normalize: bool) -> np.ndarray:
    """Decode one upload into a (28, 28) float32 array in [0, 1]; invert=None inverts light backgrounds."""
    gray = decode_gray(data, name, limits)
    pixels = np.asarray(gray, np.float32) / 255.0
    if invert is None:
        invert = _border_mean(pixels) > 0.5
    if invert:
        pixels = 1.0 - pixels
    return mnist_normalize(pixels) if normalize else _fit_square(pixels)


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


def mnist_normalize(pixels: np.ndarray, ink_threshold: float = 0.2) -> np.ndarray:
    """MNIST's recipe: crop to the digit, fit it into 20x20 keeping its aspect, centre its centre of mass in 28x28."""
    rows, cols = np.nonzero(pixels > ink_threshold)
    if rows.size == 0:
        return _fit_square(pixels)  # blank image: nothing to centre
    digit = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    height, width = digit.shape
    scale = FIT / max(height, width)
    digit = _resize(digit, max(1, round(width * scale)), max(1, round(height * scale)))
    height, width = digit.shape
    total = digit.sum()
    cy = (digit.sum(axis=1) @ np.arange(height)) / total
    cx = (digit.sum(axis=0) @ np.arange(width)) / total
    top = min(max(round(SIDE / 2 - 0.5 - cy), 0), SIDE - height)
    left = min(max(round(SIDE / 2 - 0.5 - cx), 0), SIDE - width)
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top:top + height, left:left + width] = digit
    return out


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
