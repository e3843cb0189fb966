"""Grayscale pixels of any size -> the model's input: 28x28 in [0, 1], white digit on black, MNIST-normalised."""

import math
from typing import Any

import numpy as np
from PIL import Image

from service.api.v1.photo import MIN_SIDE, clean, dark_ink

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


def preprocess(pixels: np.ndarray, invert: bool | None, normalize: bool | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Grayscale pixels in [0, 1] of any size -> the (28, 28) model input and what was done to it:
    {"inverted", "normalized", "background_removed", "threshold", "crop_box"}.

    invert=None (auto) inverts a light background (the outermost ring of pixels brighter than 0.5 on average), or
    a larger picture with a dark border whose ink is darker than its paper (`_auto_invert`).
    normalize=None (auto) normalises unless the (possibly inverted) image already looks like an MNIST digit
    (`looks_like_mnist`), so MNIST digits pass through untouched and any other picture of a digit is cleaned
    (service.api.v1.photo.clean: the paper's shading and noise removed, the ink levelled and cropped), then scaled
    and centred the way MNIST's were (`fit_and_centre`). normalize=False only fits the whole image into 28x28.

    threshold ({"method": "otsu" | "noise" | "levels", "value": float}: the residual above the paper that counted
    as ink) and crop_box ([top, left, bottom, right], bottom and right exclusive, in `pixels`' coordinates) are None
    when the image was not normalised. A normalised image with no ink left: ImageError (422)."""
    inverted = _auto_invert(pixels) if invert is None else invert
    if inverted:
        pixels = 1.0 - pixels
    normalized = not looks_like_mnist(pixels) if normalize is None else normalize
    done = untouched() | {"inverted": bool(inverted), "normalized": bool(normalized)}
    if not normalized:
        return _fit_square(pixels), done
    cleaned = clean(pixels)
    done.update(background_removed=cleaned.background_removed, crop_box=list(cleaned.box),
                threshold={"method": cleaned.threshold_method, "value": cleaned.threshold})
    return fit_and_centre(cleaned.pixels), done


def untouched() -> dict[str, Any]:
    """The preprocessing record of an image used as given (a JSON array; an MNIST-like upload under auto)."""
    return {"inverted": False, "normalized": False, "background_removed": False, "threshold": None, "crop_box": None}


def _auto_invert(pixels: np.ndarray) -> bool:
    """invert=auto: a light border means dark ink on light paper. A photo's border can be dark where the paper is
    light (a vignette, a shadow, grey or coloured paper under dim light): an image of MIN_SIDE pixels or more whose
    border is dark is inverted when its dark details outweigh its light ones (photo.dark_ink)."""
    if _border_mean(pixels) > 0.5:
        return True
    return min(pixels.shape) >= MIN_SIDE and dark_ink(pixels)


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
    return fit_and_centre(pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1])


def fit_and_centre(digit: np.ndarray) -> np.ndarray:
    """A digit cropped to its box, ink in [0, 1] -> 28x28: fitted into 20x20 keeping its aspect, levelled again (a
    thin stroke that shrinking turned grey is ink at full strength) and its centre of mass put at CENTRE."""
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
