"""Photos of digits: remove the paper (its shading and its noise) before the digit is cropped.

A phone photo of a digit is grey paper under uneven light, with sensor noise and JPEG blocks. MNIST's levels step
(paper 0, the strongest ink 1) keeps the shading: the crop then takes most of the photo. Here, on white-on-black
pixels (after inversion; `dark_ink` tells preprocess.preprocess the ink's polarity when the border cannot):

1. The paper's illumination is estimated at a large scale: the image shrunk to BACKGROUND_SIDE pixels (area
   averaging, which also averages the noise away), a grey-level opening (minimum then maximum filter) a quarter of
   that side wide, which removes anything narrower (the ink) and keeps the paper's gradients, vignettes and
   shadows' edges. The estimate, enlarged back, is subtracted: what is left is ink, near 0 on paper wherever the
   light fell.
2. The noise left on the paper is measured (the median absolute deviation of the residual, lightly blurred: JPEG
   blocks and sensor noise are finer than any stroke); the ink is what stands out of it, by Otsu's threshold over
   the residual above the paper, never below NOISE_SIGMAS times the noise nor MIN_CONTRAST. Nothing standing out
   (blank paper, paper without ink, pure noise), or only something faint and soft-edged (a shadow's edge: ink is
   sharp), is an ImageError with status 422.
3. The crop: the rows and columns holding ink (specks beyond an empty row or column left out); in a photo, ink
   regions touching the border (the desk, the page's edge) are left out when other ink remains; on clean paper (a
   drawing, a scan) the strokes' soft edges are kept in the box, as MNIST's crop. Levels: half the threshold's
   height above the paper becomes 0, the strong ink (95th percentile of the ink's residual) 1.

Pillow (resizing) and numpy (the rank filters and blurs) only: the serving image gains no dependency.
bench/photos.py measures the same steps with OpenCV and scikit-image: OpenCV is faster per image but its wheel adds
about 170 MB installed; scikit-image is slower and brings SciPy (about 180 MB)."""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.api.v1.decoding import ImageError

BACKGROUND_SIDE = 96  # the illumination is estimated on the image shrunk to this longest side
OPENING = 0.25  # the opening's width, as a share of BACKGROUND_SIDE: wider than a bold stroke of a digit filling it
MIN_SIDE = 48  # smaller images (a 28x28 digit not placed like MNIST's) keep MNIST's levels: too small to hold shading
NOISE_SIGMAS = 6.0  # ink must stand this many noise deviations above the paper
MIN_CONTRAST = 0.1  # ... and this much above it in absolute terms (of the full 0..1 range)
MIN_INK_PIXELS = 4  # fewer ink pixels than this in the decoded image, or than MIN_INK_SHARE of it: nothing left
MIN_INK_SHARE = 1e-4
LOW = 0.5  # levels: the paper's level plus this share of the threshold's height above it becomes 0
STRONG = 95  # levels: this percentile of the ink's residual becomes 1 (the strongest ink, unmoved by a few hot pixels)
BOX_INK = 0.2  # on clean paper, the crop holds the pixels above this share of the strong ink's height over the paper
CLEAN_NOISE = 0.005  # paper is clean (a drawing, a scan, a rendered font) when its noise is under this
FAINT = 0.2  # ink this faint over the paper (of the full range) must also be sharp ...
SOFT_EDGE = 5.0  # ... its edges rising within this many pixels (edge_width); else it is shading, not ink
INK = 0.2  # small images: a pixel above this share of the contrast is ink (as preprocess.INK)
BORDER_SIDE = 128  # photos: ink regions touching the border are found on the ink mask shrunk to this side
SPECK = 0.005  # the crop holds the rows (columns) between these quantiles of the ink, and the ink touching them


@dataclass(frozen=True)
class Cleaned:
    """A cleaned picture: `pixels` ink in [0, 1] on 0 paper, cropped to `box` ([top, left, bottom, right) in the
    decoded image's pixels, bottom and right exclusive), how the ink was told from the paper."""

    pixels: np.ndarray
    box: tuple[int, int, int, int]
    background_removed: bool
    threshold_method: str
    threshold: float


def _gray(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels, np.float32), mode="F")


def _shrunk(pixels: np.ndarray) -> np.ndarray:
    """The image shrunk to BACKGROUND_SIDE on its longer side by area averaging (which averages the noise away)."""
    height, width = pixels.shape
    scale = BACKGROUND_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(_gray(pixels).resize(size, Image.Resampling.BOX), np.float32)


def _rank(pixels: np.ndarray, size: int, reduce) -> np.ndarray:
    """A size x size minimum or maximum filter (separable, edges repeated): Pillow's rank filters are 30 times
    slower at this size."""
    radius = size // 2
    out = pixels
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        out = reduce(np.lib.stride_tricks.sliding_window_view(padded, size, axis=axis), axis=-1)
    return out


def _opening_size() -> int:
    return 2 * round(OPENING * BACKGROUND_SIDE / 2) + 1


def estimate_background(pixels: np.ndarray) -> np.ndarray:
    """The paper's illumination under white-on-black pixels (ink bright): a large-scale grey-level opening
    (minimum, then maximum filter) of the shrunk image, blurred and enlarged back to the image's size."""
    height, width = pixels.shape
    size = _opening_size()
    opened = _rank(_rank(_shrunk(pixels), size, np.min), size, np.max)
    smooth = blur(opened, 1.0)  # only the plateaus a flat opening leaves: a shadow's edge stays where it is
    return np.asarray(_gray(smooth).resize((width, height), Image.Resampling.BILINEAR), np.float32)


def dark_ink(pixels: np.ndarray) -> bool:
    """Whether the ink is darker than the paper, from the shrunk image minus its blur at the opening's scale: ink
    is a one-sided detail (darker, or lighter, than its surroundings), while the paper's noise, texture and
    shading leave details of both signs (a shadow's edge as much dark as light). Each side is counted above a
    common level, the 90th percentile of the details' size."""
    small = _shrunk(pixels)
    detail = small - blur(small, _opening_size() / 2)
    level = float(np.percentile(np.abs(detail), 90))
    return float(np.maximum(-detail - level, 0).sum()) > float(np.maximum(detail - level, 0).sum())


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur of float pixels (Pillow blurs only 8-bit images), edges repeated."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    out = pixels
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        size = out.shape[axis]
        out = sum(w * (padded[i:i + size] if axis == 0 else padded[:, i:i + size]) for i, w in enumerate(taps))
    return out.astype(np.float32, copy=False)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values`: the cut between two classes that maximises their between-class variance."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins, (low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    below = weight[:-1]
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * below / total - mass[:-1]) ** 2 / (below * above)
    between = np.nan_to_num(between, nan=-1.0)
    return float(edges[1:][:-1][int(np.argmax(between))])


def _sample(values: np.ndarray) -> np.ndarray:
    return values.ravel()[::1 + values.size // 2**16]  # 65,000 pixels describe the paper's histogram as well


def clean(pixels: np.ndarray) -> Cleaned:
    """White-on-black grayscale pixels in [0, 1] of any size -> the ink alone, cropped (see the module's doc).

    Images smaller than MIN_SIDE on either side keep MNIST's levels (`_levels`). Raises ImageError (422) when no ink
    stands out of the paper."""
    height, width = pixels.shape
    if min(height, width) < MIN_SIDE:
        return _levels(pixels)
    residual = pixels - estimate_background(pixels)
    # a light blur before thresholding: sensor noise and JPEG blocks are finer than any stroke
    smooth = blur(residual, max(0.5, max(height, width) / 800))
    sample = _sample(smooth)
    centre = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - centre)))  # the paper's noise (MAD), robust to the ink
    peak = float(smooth.max())  # after the blur: a lone hot pixel is not ink, and the ink count below must hold too
    floor = centre + max(NOISE_SIGMAS * noise, MIN_CONTRAST)
    if peak < floor:
        raise ImageError(_nothing_left(peak - centre, noise), 422)
    above = sample[sample > floor]
    threshold, method = (max(otsu(sample[sample > centre]), floor), "otsu") if above.size >= 2 else (floor, "noise")
    if threshold == floor:
        method = "noise"
    ink = smooth > threshold
    if np.count_nonzero(ink) < max(MIN_INK_PIXELS, MIN_INK_SHARE * ink.size):
        raise ImageError(_nothing_left(peak - centre, noise), 422)
    if noise > CLEAN_NOISE:  # a photo: the desk or the page's edge in the frame is not the digit
        ink = clear_border(ink)
    top, bottom = _extent(ink.sum(axis=1))
    left, right = _extent(ink.sum(axis=0))
    strong = float(np.percentile(residual[top:bottom, left:right][ink[top:bottom, left:right]], STRONG))
    if noise <= CLEAN_NOISE:  # clean paper: the box holds the strokes' soft edges too, as MNIST's crop
        edges = smooth > max(floor, centre + BOX_INK * (strong - centre))
        top, bottom = _extent(edges.sum(axis=1))
        left, right = _extent(edges.sum(axis=0))
    if strong - centre < FAINT and edge_width(smooth, (top, left, bottom, right), strong - centre) > SOFT_EDGE:
        raise ImageError(f"no digit found: what stands out of the paper is faint ({strong - centre:.3f}, under "
                         f"{FAINT}) and soft-edged (over {SOFT_EDGE} pixels): the light's shading or a shadow, not "
                         f"ink", 422)
    crop = residual[top:bottom, left:right]
    low = centre + (threshold - centre) * LOW
    digit = np.clip((crop - low) / max(strong - low, 1e-6), 0.0, 1.0)
    return Cleaned(digit.astype(np.float32), (top, left, bottom, right), True, method, round(threshold, 4))


def _levels(pixels: np.ndarray) -> Cleaned:
    """MNIST's levels for a small image (as mnist_normalize): the median pixel is paper (0), the strongest 1, ink
    above INK of that contrast."""
    background = float(np.median(pixels))
    contrast = float(pixels.max()) - background
    if contrast <= INK:
        raise ImageError(_nothing_left(contrast, 0.0), 422)
    levelled = np.clip((pixels - background) / contrast, 0.0, 1.0)
    rows, cols = np.nonzero(levelled > INK)
    top, left, bottom, right = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
    return Cleaned(levelled[top:bottom, left:right], (top, left, bottom, right), False, "levels",
                   round(background + INK * contrast, 4))


def edge_width(smooth: np.ndarray, box: tuple[int, int, int, int], contrast: float) -> float:
    """How many pixels the ink's edges take to rise by its contrast: the contrast over the steepest slopes (99th
    percentile of the gradient's magnitude) in the box. Ink is sharp (1 to 5 pixels in a phone photo); the edge of a
    shadow or of the light's fall-off is soft (tens of pixels)."""
    top, left, bottom, right = box
    region = smooth[max(top - 2, 0):bottom + 2, max(left - 2, 0):right + 2]
    if min(region.shape) < 3:
        return 0.0
    rows, cols = np.gradient(region)
    slope = float(np.percentile(np.hypot(rows, cols), 99))
    return contrast / max(slope, 1e-6)


def clear_border(ink: np.ndarray) -> np.ndarray:
    """The ink mask without the regions that touch the image's border (the desk beside the page, the page's edge,
    a shadow's corner), unless nothing else is left (a digit cut by the frame). Regions are found on the mask
    shrunk to BORDER_SIDE (a block holds ink if any of its pixels does), by growing the border's ink within it."""
    height, width = ink.shape
    block = max(1, -(-max(height, width) // BORDER_SIDE))
    rows, cols = -(-height // block), -(-width // block)
    padded = np.zeros((rows * block, cols * block), bool)
    padded[:height, :width] = ink
    small = padded.reshape(rows, block, cols, block).any(axis=(1, 3))
    reached = np.zeros_like(small)
    reached[[0, -1], :], reached[:, [0, -1]] = small[[0, -1], :], small[:, [0, -1]]
    if not reached.any():
        return ink
    for step in range(rows + cols):
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= small
        if step % 4 == 3 and np.array_equal(grown, reached):
            break
        reached = grown
    if not (small & ~reached).any():
        return ink
    touching = np.repeat(np.repeat(reached, block, axis=0), block, axis=1)[:height, :width]
    return ink & ~touching


def _extent(counts: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of the rows (or columns) holding the digit: those between the SPECK and
    1 - SPECK quantiles of the ink, grown through every adjacent row that holds ink (a stroke's tip is in the
    digit; a speck beyond an empty row is not)."""
    cumulative = np.cumsum(counts)
    first = int(np.searchsorted(cumulative, SPECK * cumulative[-1], side="right"))
    last = int(np.searchsorted(cumulative, (1 - SPECK) * cumulative[-1], side="left"))
    empty = np.nonzero(counts == 0)[0]
    before, after = empty[empty < first], empty[empty > last]
    return (int(before[-1]) + 1 if before.size else 0), (int(after[0]) if after.size else counts.size)


def _nothing_left(contrast: float, noise: float) -> str:
    return (f"no digit found: once the paper's shading is removed nothing stands out from it (ink contrast "
            f"{max(contrast, 0.0):.3f}, paper noise {noise:.3f}; at least {MIN_CONTRAST} and {NOISE_SIGMAS:g} times "
            f"the noise are needed): blank paper, a picture without ink or all noise")
