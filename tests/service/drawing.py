"""Digits drawn with Pillow the way a user draws them in a paint program: strokes on a large light canvas, anywhere.

Used by the upload tests and by bench/normalize_rule.py (which measures the `normalize=auto` rule on them)."""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Strokes in unit coordinates of the digit's box (x right, y down): polylines, and ellipse arcs (box, start, end).
STROKES = {
    "0": [("arc", (0.0, 0.0, 1.0, 1.0), 0, 360)],
    "1": [("line", [(0.25, 0.2), (0.55, 0.0), (0.55, 1.0)])],
    "2": [("arc", (0.0, 0.0, 1.0, 0.55), 180, 400), ("line", [(0.92, 0.38), (0.0, 1.0), (1.0, 1.0)])],
    "7": [("line", [(0.0, 0.0), (1.0, 0.0), (0.3, 1.0)])],
}


def draw_digit(digit: str, size: tuple[int, int] = (400, 300), box: tuple[int, int, int, int] = (50, 40, 150, 200),
               width: int = 12, ink: tuple[int, int, int] = (0, 0, 0),
               paper: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An RGB canvas of `size` (width, height) with `digit` drawn in strokes of `width` pixels inside `box`
    (left, top, right, bottom, in pixels). Digits without strokes in STROKES are typed in Pillow's default font."""
    image = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    if digit not in STROKES:
        font = ImageFont.load_default(size=bottom - top)
        x0, y0, x1, y1 = draw.textbbox((0, 0), digit, font=font)
        draw.text((left - x0, top - y0), digit, fill=ink, font=font)
        return image

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), top + y * (bottom - top)

    for kind, *args in STROKES[digit]:
        if kind == "line":
            draw.line([at(*point) for point in args[0]], fill=ink, width=width, joint="curve")
        else:
            (x0, y0, x1, y1), start, end = args
            draw.arc([*at(x0, y0), *at(x1, y1)], start, end, fill=ink, width=width)
    return image


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def drawn_digits(count: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """`count` varied drawings: digit, canvas size, position, height, stroke width and colours drawn at random."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        digit = str(rng.integers(10)) if i % 2 else "0127"[i // 2 % 4]
        size = [(400, 300), (300, 400), (640, 480), (256, 256), (800, 200)][rng.integers(5)]
        height = int(rng.uniform(0.3, 0.8) * size[1])
        digit_width = int(height * rng.uniform(0.4, 0.8))
        left = int(rng.uniform(0.02, 0.98) * (size[0] - digit_width))
        top = int(rng.uniform(0.02, 0.98) * (size[1] - height))
        width = max(2, int(height * rng.uniform(0.04, 0.15)))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        paper = tuple(int(v) for v in rng.integers(200, 256, 3))
        out.append((digit, draw_digit(digit, size, (left, top, left + digit_width, top + height), width, ink, paper)))
    return out
