"""Model output -> PNG: one image, a grid, or rows of images."""

import io
import math

import numpy as np
from PIL import Image

from service.api.v1.preprocess import SIDE


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
