"""Image preprocessing: inversion, resizing, MNIST-style normalisation, and the PNG grid."""

import io

import numpy as np
import pytest
from PIL import Image

from service.images import DecodeLimits, ImageError, grid_shape, load_image, mnist_normalize, to_png

LIMITS = DecodeLimits(("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"), max_pixels=4_000_000, max_aspect=20)
OPTIONS = {"limits": LIMITS, "invert": None, "normalize": False}


def test_load_image_mnist_digit_unchanged(digit_pngs, digits):
    np.testing.assert_array_equal(load_image(digit_pngs[0], "d", **OPTIONS), digits[0, ..., 0])


def test_load_image_light_background_inverted(encode_image, digits):
    light = encode_image(1.0 - digits[0, ..., 0])
    np.testing.assert_allclose(load_image(light, "d", **OPTIONS), digits[0, ..., 0], atol=1e-6)
    kept = load_image(light, "d", **(OPTIONS | {"invert": False}))
    assert kept[0, 0] == 1.0


def test_load_image_non_square_padded_and_resized(encode_image):
    wide = np.zeros((50, 100), np.uint8)
    wide[20:30, 45:55] = 255
    image = load_image(encode_image(wide), "d", **OPTIONS)
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    rows = np.nonzero(image.max(axis=1) > 0.5)[0]
    assert 11 <= rows.min() and rows.max() <= 16  # the square stays square and centred: no stretching


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
    np.testing.assert_allclose(centre, (13.5, 13.5), atol=1.0)


def test_mnist_normalize_blank_image_stays_blank():
    np.testing.assert_array_equal(mnist_normalize(np.zeros((40, 40), np.float32)), np.zeros((28, 28)))


def test_load_image_animated_gif_uses_first_frame(digit_pngs):
    frames = [Image.open(io.BytesIO(png)) for png in digit_pngs[:2]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(load_image(buffer.getvalue(), "a.gif", **OPTIONS),
                                  load_image(digit_pngs[0], "d", **OPTIONS))


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
    image = load_image(encode_image(photo, "JPEG", quality=90), "photo.jpg", **(OPTIONS | {"normalize": True}))
    assert image.shape == (28, 28)
    assert image[14, 14] > 0.8 and image[0, 0] < 0.1  # inverted, centred
