"""Image preprocessing: inversion, resizing, MNIST-style normalisation, the normalize=auto rule, and the PNG grid."""

import io

import numpy as np
import pytest
from PIL import Image

from service.api.v1.decode_pool import load_image
from service.api.v1.decoding import DecodeLimits, ImageError
from service.api.v1.png import grid_shape, to_png
from service.api.v1.preprocess import CENTRE, looks_like_mnist, mnist_features, mnist_normalize, preprocess
from tests.service.drawing import draw_digit, encoded

LIMITS = DecodeLimits(("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"), max_pixels=4_000_000, max_aspect=20)
OPTIONS = {"limits": LIMITS, "invert": None, "normalize": None}


def pixels_of(data: bytes, **options) -> np.ndarray:
    return load_image(data, "d", **(OPTIONS | options))[0]


def test_load_image_mnist_digit_unchanged(digit_pngs, digits):
    pixels, done = load_image(digit_pngs[0], "d", **OPTIONS)
    np.testing.assert_array_equal(pixels, digits[0, ..., 0])
    assert done == {"inverted": False, "normalized": False, "background_removed": False, "threshold": None,
                    "crop_box": None}


def test_load_image_light_background_inverted(encode_image, digits):
    light = encode_image(1.0 - digits[0, ..., 0])
    pixels, done = load_image(light, "d", **OPTIONS)
    np.testing.assert_allclose(pixels, digits[0, ..., 0], atol=1e-6)
    assert done["inverted"] and not done["normalized"]  # inverted, then MNIST-like: passed through
    assert not done["background_removed"] and done["crop_box"] is None
    kept = pixels_of(light, invert=False, normalize=False)
    assert kept[0, 0] == 1.0


def test_load_image_non_square_padded_and_resized(encode_image):
    wide = np.zeros((50, 100), np.uint8)
    wide[20:30, 45:55] = 255
    image = pixels_of(encode_image(wide), normalize=False)
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    rows = np.nonzero(image.max(axis=1) > 0.5)[0]
    assert 11 <= rows.min() and rows.max() <= 16  # the square stays square and centred: no stretching


def test_load_image_drawing_reports_inverted_and_normalized():
    pixels, done = load_image(encoded(draw_digit("7"), "PNG"), "seven.png", **OPTIONS)
    assert done["inverted"] and done["normalized"] and done["background_removed"]
    top, left, bottom, right = done["crop_box"]  # the 7 is drawn in the box (50, 40)-(150, 200), strokes 12 wide
    assert 30 <= top <= 40 and 40 <= left <= 50 and 195 <= bottom <= 210 and 150 <= right <= 160
    np.testing.assert_array_equal(pixels, pixels_of(encoded(draw_digit("7"), "PNG"), normalize=True))


def test_mnist_normalize_fits_and_centres_digit(digits):
    canvas = np.zeros((400, 300), np.float32)
    big = np.asarray(Image.fromarray(digits[0, ..., 0]).resize((140, 140)), np.float32)
    canvas[10:150, 150:290] = big  # a large digit in the top-right corner
    out = mnist_normalize(canvas)
    assert out.shape == (28, 28)
    rows, cols = np.nonzero(out > 0.2)
    assert rows.max() - rows.min() < 21 and cols.max() - cols.min() < 21
    total = out.sum()
    centre = ((out.sum(axis=1) @ np.arange(28)) / total, (out.sum(axis=0) @ np.arange(28)) / total)
    np.testing.assert_allclose(centre, (CENTRE, CENTRE), atol=0.5)  # where MNIST puts it: 13.5 to 14.5


def test_mnist_normalize_sets_levels_of_grey_paper_and_thin_strokes():
    """A pencil photo: grey paper (0.3 after inversion) and faint thin strokes become 0 and full-strength ink."""
    photo = np.full((300, 400), 0.3, np.float32)
    photo[50:250, 198:201] = 0.55  # a 3-pixel stroke, 200 high: under 0.3 pixels wide once fitted into 20
    out = mnist_normalize(photo)
    assert out.max() == 1.0
    assert out[0, 0] == 0.0 and np.count_nonzero(out) < 80  # the paper is background, not a box of grey


def test_mnist_normalize_blank_image_stays_blank():
    np.testing.assert_array_equal(mnist_normalize(np.zeros((40, 40), np.float32)), np.zeros((28, 28)))
    np.testing.assert_allclose(mnist_normalize(np.full((40, 40), 0.1, np.float32)), np.full((28, 28), 0.1), atol=1e-6)


def test_looks_like_mnist_passes_mnist_test_digits(mnist_test_digits):
    passed = [looks_like_mnist(digit / np.float32(255)) for digit in mnist_test_digits]
    assert np.mean(passed) >= 0.99, f"{np.mean(passed):.3f} of MNIST test digits look like MNIST"


def moved(digit: np.ndarray) -> np.ndarray:
    return np.pad(digit, ((3, 0), (0, 3)))[:28, 3:]  # 3 pixels down and left


def shrunk(digit: np.ndarray) -> np.ndarray:
    return np.pad(np.asarray(Image.fromarray(digit).resize((16, 16), Image.Resampling.LANCZOS)), 6)


def enlarged(digit: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((40, 40), Image.Resampling.LANCZOS))[6:34, 6:34]


@pytest.mark.parametrize("transform", [moved, shrunk, enlarged])
def test_looks_like_mnist_rejects_digits_not_placed_like_mnist(mnist_test_digits, transform):
    passed = [looks_like_mnist(transform(digit) / np.float32(255)) for digit in mnist_test_digits[:100]]
    assert np.mean(passed) <= 0.01, f"{np.mean(passed):.2f} passed"


def test_looks_like_mnist_needs_28x28(mnist_test_digits):
    digit = mnist_test_digits[0] / np.float32(255)
    assert looks_like_mnist(digit)
    assert not looks_like_mnist(np.kron(digit, np.ones((2, 2), np.float32)))  # the same digit at 56x56
    assert not looks_like_mnist(np.zeros((28, 28), np.float32))  # blank
    assert not looks_like_mnist(1 - digit)  # light background


def test_normalized_drawings_look_like_mnist():
    """The rule and the normalisation agree: what mnist_normalize makes of a drawing passes auto untouched."""
    for digit in "0127":
        for width in (4, 12, 40):
            pixels, done = preprocess(np.asarray(draw_digit(digit, width=width).convert("L"), np.float32) / 255,
                                      None, None)
            assert done["normalized"] and looks_like_mnist(pixels), (digit, width, mnist_features(pixels))


def test_load_image_animated_gif_uses_first_frame(digit_pngs):
    frames = [Image.open(io.BytesIO(png)) for png in digit_pngs[:2]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(pixels_of(buffer.getvalue()), pixels_of(digit_pngs[0]))


def test_load_image_over_pixel_limit_is_413(encode_image):
    small = DecodeLimits(("PNG",), max_pixels=1000, max_aspect=20)
    with pytest.raises(ImageError, match=r"is 200x200 pixels, over the limit of 1000") as err:
        load_image(encode_image(np.zeros((200, 200), np.uint8)), "big.png", **(OPTIONS | {"limits": small}))
    assert err.value.status == 413


@pytest.mark.parametrize("count", [1, 2, 5, 16, 17])
def test_to_png_grid_has_grid_shape(count):
    image = Image.open(io.BytesIO(to_png(np.ones((count, 28, 28, 1), np.float32))))
    assert image.size[::-1] == grid_shape(count)
    assert image.mode == "L"


def test_load_image_phone_photo_jpeg_becomes_digit(encode_image):
    photo = np.full((3000, 4000, 3), 230, np.uint8)  # a dark vertical stroke on light paper
    photo[1000:2000, 1800:2100] = 20
    image, done = load_image(encode_image(photo, "JPEG", quality=90), "photo.jpg", **OPTIONS)
    assert done["inverted"] and done["normalized"] and done["background_removed"]
    assert image.shape == (28, 28)
    assert image[14, 14] > 0.8 and image[0, 0] < 0.1  # inverted, centred
