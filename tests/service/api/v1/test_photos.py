"""Photos of digits: the paper's shading and noise removed before the crop (service.api.v1.photo), what the
`preprocessing` record says, bad input refused with 422, and the per-image verdict (service.api.v1.verdict).

tests/data/photos holds a dozen small generated photos (bench/photos.py --write-test-set), named
<style>_<i>_<label>.jpg (label x: no digit)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.api.v1 import photo, verdict
from service.api.v1.decode_pool import load_image
from service.api.v1.decoding import DecodeLimits, ImageError, decode_gray
from service.api.v1.preprocess import INK_FRACTION, _fit_square, looks_like_mnist, mnist_features, preprocess

PHOTOS = Path(__file__).parents[3] / "data" / "photos"
LIMITS = DecodeLimits(("PNG", "JPEG"), max_pixels=4_000_000, max_aspect=20)
DIGIT_PHOTOS = sorted(p for p in PHOTOS.glob("photo_*.jpg"))
BLANK_PHOTOS = sorted(PHOTOS.glob("bad_blank_*.jpg"))
KEYS = {"inverted", "normalized", "background_removed", "threshold", "crop_box"}


def gray_of(path: Path) -> np.ndarray:
    return np.asarray(decode_gray(path.read_bytes(), path.name, LIMITS), np.float32) / 255


def shaded_photo(seed: int = 0, size: tuple[int, int] = (480, 640), ink: bool = True) -> np.ndarray:
    """Grey paper under a strong light gradient (0.35 to 0.95 left to right), sensor noise, and (ink) a dark '7'
    of thick strokes left of centre, as grayscale pixels in [0, 1]."""
    height, width = size
    rng = np.random.default_rng(seed)
    light = np.linspace(0.35, 0.95, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    reflectance = np.full(size, 0.9, np.float32)
    if ink:
        reflectance[150:166, 150:300] = 0.15  # the 7's bar
        for row in range(166, 400):  # its slanted stem
            col = 290 - (row - 166) * 100 // 234
            reflectance[row, col - 8:col + 8] = 0.15
    pixels = reflectance * light + rng.normal(0, 0.02, size).astype(np.float32)
    return np.clip(pixels, 0, 1)


def test_photo_set_is_small_and_present():
    assert len(DIGIT_PHOTOS) >= 8 and BLANK_PHOTOS
    assert sum(p.stat().st_size for p in PHOTOS.iterdir()) < 2_000_000


@pytest.mark.parametrize("path", DIGIT_PHOTOS, ids=lambda p: p.stem)
def test_photo_background_removed_and_digit_centred(path):
    """Each photo's paper becomes black, its digit is cropped tight and placed as MNIST places digits."""
    gray = gray_of(path)
    pixels, done = preprocess(gray, None, None)
    assert set(done) == KEYS
    assert done["inverted"] and done["normalized"] and done["background_removed"]
    assert done["threshold"]["method"] in ("otsu", "noise") and 0 < done["threshold"]["value"] < 1
    top, left, bottom, right = done["crop_box"]
    assert 0 <= top < bottom <= gray.shape[0] and 0 <= left < right <= gray.shape[1]
    assert (bottom - top) * (right - left) < 0.5 * gray.size, "the crop took most of the photo: paper kept as ink"
    features = mnist_features(pixels)
    assert looks_like_mnist(pixels), features
    assert INK_FRACTION[0] <= features["ink_fraction"] <= 0.3
    assert pixels.max() == 1.0 and np.mean(pixels == 0) > 0.5  # full-strength ink on black paper


def test_shaded_paper_would_have_been_kept_as_ink_by_levels_alone():
    """The regression this module fixes: with MNIST's levels only (the median paper 0), the lit half of a shaded
    page is ink and the crop takes the page; with the shading removed, the crop is the digit's box."""
    gray = shaded_photo()
    inverted = 1 - gray
    levelled = np.clip((inverted - np.median(inverted)) / (inverted.max() - np.median(inverted)), 0, 1)
    assert np.mean(levelled > 0.2) > 0.3  # levels alone: a third of the page counts as ink
    pixels, done = preprocess(gray, None, None)
    assert done["background_removed"] and done["inverted"]
    top, left, bottom, right = done["crop_box"]
    assert abs(top - 150) <= 4 and abs(bottom - 400) <= 4 and abs(left - 150) <= 4 and abs(right - 300) <= 4
    assert looks_like_mnist(pixels), mnist_features(pixels)


def test_dark_border_photo_of_light_paper_is_inverted():
    """invert=auto: a photo whose border is dark (dim light at the edges) but whose ink is darker than the paper."""
    gray = shaded_photo() * 0.55  # the whole page under dim light: the border averages well under 0.5
    assert float(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]).mean()) < 0.5
    _, done = preprocess(gray, None, None)
    assert done["inverted"]
    ink = shaded_photo(ink=True) < 0.3 * shaded_photo(ink=False)
    chalk = np.where(ink, 0.85, 0.1 + 0.1 * np.linspace(0, 1, 640, dtype=np.float32)[None, :]).astype(np.float32)
    _, light_on_dark = preprocess(chalk, None, None)  # chalk on a blackboard: left as it is
    assert not light_on_dark["inverted"] and light_on_dark["background_removed"]


@pytest.mark.parametrize("path", BLANK_PHOTOS, ids=lambda p: p.stem)
def test_blank_photographed_paper_is_422(path):
    with pytest.raises(ImageError, match="no digit found") as err:
        load_image(path.read_bytes(), path.name, limits=LIMITS, invert=None, normalize=None)
    assert err.value.status == 422


@pytest.mark.parametrize("picture", [
    shaded_photo(ink=False),  # shaded paper without ink
    np.full((300, 400), 0.8, np.float32),  # flat paper
    np.random.default_rng(3).random((300, 400), dtype=np.float32),  # all noise
    np.zeros((28, 28), np.float32),  # a blank 28x28 image asked to be normalised
], ids=["shaded_paper", "flat_paper", "noise", "blank_28"])
def test_nothing_left_after_cleaning_is_422(picture):
    with pytest.raises(ImageError, match="no digit found") as err:
        preprocess(picture, None, True)
    assert err.value.status == 422


def test_mnist_digits_pass_through_untouched(mnist_test_digits):
    for digit in mnist_test_digits[:100]:
        pixels = digit / np.float32(255)
        out, done = preprocess(pixels, None, None)
        assert out is pixels or np.array_equal(out, pixels)
        assert done == {"inverted": False, "normalized": False, "background_removed": False, "threshold": None,
                        "crop_box": None}


def test_normalize_false_and_invert_false_unchanged():
    """normalize=false only fits the whole picture into 28x28 (no cleaning, no crop); invert=false never inverts."""
    gray = shaded_photo()
    out, done = preprocess(gray, None, False)
    np.testing.assert_array_equal(out, _fit_square(1 - gray))
    assert done == {"inverted": True, "normalized": False, "background_removed": False, "threshold": None,
                    "crop_box": None}
    out, done = preprocess(gray, False, False)
    np.testing.assert_array_equal(out, _fit_square(gray))
    assert not done["inverted"]
    _, done = preprocess(gray, False, True)  # dark ink kept dark: the cleaning looks for light ink on the paper
    assert not done["inverted"] and done["normalized"]


def test_small_images_keep_mnist_levels(mnist_test_digits):
    """A 28x28 digit not placed like MNIST's is normalised with MNIST's levels, not the photo cleaning."""
    moved = np.roll(mnist_test_digits[0] / np.float32(255), 5, axis=1)
    out, done = preprocess(moved, None, None)
    assert done["normalized"] and not done["background_removed"] and done["threshold"]["method"] == "levels"
    assert looks_like_mnist(out)


def test_crop_box_is_in_decoded_pixels():
    canvas = np.full((400, 600), 0.9, np.float32)
    canvas[100:220, 350:380] = 0.1  # a '1' at rows 100-219, columns 350-379
    _, done = preprocess(canvas, None, None)
    top, left, bottom, right = done["crop_box"]
    assert abs(top - 100) <= 2 and abs(bottom - 220) <= 2 and abs(left - 350) <= 2 and abs(right - 380) <= 2


def test_preprocessing_record_is_json():
    _, done = preprocess(shaded_photo(), None, None)
    assert json.loads(json.dumps(done)) == done


def test_jpeg_upload_of_shaded_photo_reads_as_centred_digit():
    buffer = io.BytesIO()
    Image.fromarray((shaded_photo(1) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=40)
    pixels, done = load_image(buffer.getvalue(), "shaded.jpg", limits=LIMITS, invert=None, normalize=None)
    assert done["background_removed"] and looks_like_mnist(pixels)


def test_otsu_splits_two_levels():
    values = np.concatenate([np.full(900, 0.1), np.full(100, 0.7)]).astype(np.float32)
    assert 0.1 <= photo.otsu(values) < 0.7


# --- the verdict ----------------------------------------------------------------------------------------------

def test_kl_from_prior_is_zero_at_the_prior_and_grows():
    d = 4
    assert verdict.kl_from_prior(np.zeros((1, d)), np.eye(d)[None])[0] == pytest.approx(0.0, abs=1e-9)
    # KL(N(m, s^2 I) || N(0, I)) = (d s^2 + |m|^2 - d - 2 d log s) / 2
    m, s = np.full((1, d), 0.5), 0.5
    expected = (d * s ** 2 + (m ** 2).sum() - d - 2 * d * np.log(s)) / 2
    assert verdict.kl_from_prior(m, s * np.eye(d)[None])[0] == pytest.approx(expected)


def test_verdict_places_estimate_among_calibration():
    calibration = {"levels": [0.0, 50.0, 99.0, 100.0], "values": [10.0, 20.0, 30.0, 40.0]}
    images = np.zeros((2, 28, 28, 1), np.float32)
    probs = np.full((2, 28, 28, 1), 0.5, np.float32)  # 784 log 2 = 543 nats: beyond every test digit
    probs[0] = 0.999  # ... or, for an all-zero image, almost nothing
    mean, scale = np.zeros((2, 3), np.float32), np.eye(3, dtype=np.float32)[None].repeat(2, 0)
    out = verdict.verdict_batch(images, mean, scale, 1 - probs, calibration)
    assert out[0]["understood"] is True and out[0]["percentile"] == 0.0
    assert out[1]["understood"] is False and out[1]["percentile"] == 100.0
    assert out[1]["nll_estimate"] == pytest.approx(784 * np.log(2), rel=1e-3)
    no_calibration = verdict.verdict_batch(images, mean, scale, probs, None)
    assert no_calibration[0]["understood"] is None and no_calibration[0]["percentile"] is None


@pytest.fixture(scope="module")
def v_model(real_model_dir):
    """The real model: the highest bundled version with a calibration (version 1 predates calibrations)."""
    import tensorflow as tf

    candidates = sorted((p for p in real_model_dir.parent.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name))
    for directory in candidates:
        metadata = directory / "metadata.json"
        calibration = metadata.is_file() and json.loads(metadata.read_text()).get("calibration")
        if calibration:
            return tf.saved_model.load(str(directory)).signatures, calibration
    pytest.skip(f"no model version with a calibration in {real_model_dir.parent}")


def _verdicts(signatures, calibration, images: np.ndarray) -> list[dict]:
    x = images.reshape(len(images), 28, 28, 1).astype(np.float32)
    enc = {k: v.numpy() for k, v in signatures["encode"](images=x).items()}
    rec = {k: v.numpy() for k, v in signatures["reconstruct"](images=x).items()}
    return verdict.verdict_batch(x, enc["mean"], enc["scale_tril"], rec["probs"], calibration)


def test_verdict_understands_mnist_and_cleaned_photos_but_not_noise(v_model, mnist_test_digits):
    signatures, calibration = v_model
    mnist = _verdicts(signatures, calibration, mnist_test_digits[:50] / np.float32(255))
    assert np.mean([v["understood"] for v in mnist]) >= 0.95
    cleaned = np.stack([preprocess(gray_of(p), None, None)[0] for p in DIGIT_PHOTOS])
    assert np.mean([v["understood"] for v in _verdicts(signatures, calibration, cleaned)]) >= 0.8
    rng = np.random.default_rng(0)
    noise = rng.random((10, 28, 28), dtype=np.float32)
    shaded_as_before = np.stack([_fit_square(1 - shaded_photo(i)) for i in range(5)])  # the page, uncleaned
    flagged = _verdicts(signatures, calibration, np.concatenate([noise, shaded_as_before]))
    assert not any(v["understood"] for v in flagged), flagged


def test_distortion_from_logits_matches_probs():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 28, 28, 1))
    images = rng.random((3, 28, 28, 1))
    probs = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(verdict.distortion(images, logits=logits), verdict.distortion(images, probs), rtol=1e-6)
    with pytest.raises(ValueError, match="probs or logits"):
        verdict.verdict_batch(images, np.zeros((3, 2)), np.eye(2)[None].repeat(3, 0), None, None)


def test_desk_beside_the_page_is_not_the_digit():
    """A photo's frame often holds a strip of the desk beside the page: dark, so bright once inverted, and touching
    the border. It is left out of the crop when a digit remains."""
    gray = shaded_photo()
    gray[:, :40] = 0.12  # the desk along the left edge
    _, done = preprocess(gray, None, None)
    top, left, bottom, right = done["crop_box"]
    assert abs(left - 150) <= 4 and abs(right - 300) <= 4 and abs(top - 150) <= 4
    only_desk = shaded_photo(ink=False)
    only_desk[:, :40] = 0.12
    _, kept = preprocess(only_desk, None, None)  # nothing else: kept (a digit cut by the frame is still read)
    assert kept["crop_box"][1] == 0


def test_clear_border_keeps_inner_ink():
    mask = np.zeros((300, 400), bool)
    mask[:, :10] = True
    mask[100:200, 150:170] = True
    cleared = photo.clear_border(mask)
    assert not cleared[:, :10].any() and cleared[100:200, 150:170].all()
    assert photo.clear_border(mask[:, :10]).all()  # only border ink: unchanged


def test_soft_shadow_on_blank_paper_is_422_but_faint_sharp_pencil_is_read():
    """Faint and soft-edged (a shadow's edge) is not ink; faint but sharp (a pencil) is."""
    height, width = 480, 640
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    corner = 1 / (1 + np.exp(-((x + y) - 850) / 25))  # a soft shadow over the bottom-right corner
    paper = 0.85 * (1 - 0.3 * corner) + rng.normal(0, 0.01, (height, width)).astype(np.float32)
    with pytest.raises(ImageError, match="faint .* soft-edged") as err:
        preprocess(np.clip(paper, 0, 1), None, None)
    assert err.value.status == 422
    pencil = 0.85 + rng.normal(0, 0.01, (height, width)).astype(np.float32)
    pencil[150:350, 300:304] -= 0.15  # a faint, sharp '1'
    pixels, done = preprocess(np.clip(pencil, 0, 1), None, None)
    assert done["background_removed"] and abs(done["crop_box"][0] - 150) <= 3 and looks_like_mnist(pixels)
