"""Image bytes -> model input (28x28 grayscale in [0, 1], white digit on black) and model output -> PNG."""

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIDE = 28  # MNIST images are 28x28
FIT = 20  # MNIST digits were fitted into a 20x20 box before centring


class ImageError(ValueError):
    """An upload that cannot become a model input; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def load_image(data: bytes, name: str, *, max_pixels: int, invert: bool | None, normalize: bool) -> np.ndarray:
    """Decode one upload into a (28, 28) float32 array in [0, 1]; invert=None inverts light backgrounds."""
    if not data:
        raise ImageError(f"file {name!r} is empty")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size check below runs before decoding
    except Image.DecompressionBombError as err:
        raise ImageError(f"file {name!r} is a decompression bomb: {err}", 413) from None
    except (UnidentifiedImageError, OSError):  # the error text only repeats this, naming a BytesIO object
        raise ImageError(f"file {name!r} is not an image Pillow can read") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"file {name!r} declares {width}x{height} pixels, over the limit of {max_pixels}", 413)
    try:
        image.seek(0)  # first frame of an animation
        image.draft("L", (SIDE * 8, SIDE * 8))  # JPEG decodes at 1/2 to 1/8 scale: a 12 MP photo in ms, not 100s of ms
        gray = _grayscale(image)
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"file {name!r} could not be decoded: {err}") from None
    pixels = np.asarray(gray, np.float32) / 255.0
    if invert is None:
        invert = _border_mean(pixels) > 0.5
    if invert:
        pixels = 1.0 - pixels
    return mnist_normalize(pixels) if normalize else _fit_square(pixels)


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
