"""POST /v1/encode and POST /v1/reconstruct: both input styles, preprocessing, and every class of bad image input."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image


def assert_matches(response_arrays: dict, reference: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        np.testing.assert_allclose(np.asarray(response_arrays[key], np.float32), reference[key].numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=key)


def test_encode_json_equals_signature_call(client, signatures, digits):
    response = client.post("/v1/encode", json={"images": digits[..., 0].tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "mnist_vae" and isinstance(body["version"], int)
    assert_matches(body, signatures["encode"](images=digits), ("mean", "covariance", "scale_tril"))


def test_encode_png_uploads_equal_signature_call(client, signatures, digits, digit_pngs, as_files):
    response = client.post("/v1/encode", files=as_files(*digit_pngs))
    assert response.status_code == 200, response.text
    assert_matches(response.json(), signatures["encode"](images=digits), ("mean", "covariance", "scale_tril"))


def test_encode_returns_covariance_of_scale_tril(client, digits):
    body = client.post("/v1/encode", json={"images": digits[:2, ..., 0].tolist()}).json()
    tril = np.asarray(body["scale_tril"])
    assert tril.shape == (2, len(body["mean"][0]), len(body["mean"][0]))
    np.testing.assert_allclose(body["covariance"], tril @ tril.transpose(0, 2, 1), atol=1e-5)


@pytest.mark.parametrize("format,params", [("BMP", {}), ("GIF", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_encode_other_formats_equal_png(client, digit_pngs, encode_image, as_files, format, params):
    pixels = np.asarray(Image.open(io.BytesIO(digit_pngs[0])))
    expected = client.post("/v1/encode", files=as_files(digit_pngs[0])).json()
    response = client.post("/v1/encode", files=as_files(encode_image(pixels, format, **params)))
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["mean"], expected["mean"], atol=1e-6)


def test_encode_light_background_inverted_automatically(client, digit_pngs, encode_image, as_files):
    pixels = np.asarray(Image.open(io.BytesIO(digit_pngs[0])))
    expected = client.post("/v1/encode", files=as_files(digit_pngs[0])).json()
    dark_on_light = encode_image(255 - pixels)
    response = client.post("/v1/encode", files=as_files(dark_on_light))
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["mean"], expected["mean"], atol=1e-5)
    # invert=false keeps the paper light: once its shading is removed no ink stands out, which is said plainly
    refused = client.post("/v1/encode", params={"invert": "false"}, files=as_files(dark_on_light))
    assert refused.status_code == 422 and "no digit found" in refused.json()["detail"]
    kept = client.post("/v1/encode", params={"invert": "false", "normalize": "false"}, files=as_files(dark_on_light))
    assert not np.allclose(kept.json()["mean"], expected["mean"], atol=1e-5)


@pytest.mark.parametrize("route", ["/v1/encode", "/v1/reconstruct"])
def test_upload_options_bad_value_names_it(client, digit_pngs, as_files, route):
    response = client.post(route, params={"invert": "maybe"}, files=as_files(digit_pngs[0]))
    assert response.status_code == 422
    expected = "query.invert: must be auto or a boolean (true/false, 1/0, yes/no, on/off), got 'maybe'"
    assert response.json()["detail"] == expected
    response = client.post(route, params={"normalize": "2"}, files=as_files(digit_pngs[0]))
    expected = "query.normalize: must be auto or a boolean (true/false, 1/0, yes/no, on/off), got '2'"
    assert response.json()["detail"] == expected
    response = client.post(route, params={"include_input": "auto"}, files=as_files(digit_pngs[0]))
    expected = "query.include_input: must be a boolean (true/false, 1/0, yes/no, on/off), got 'auto'"
    assert response.json()["detail"] == expected


def test_upload_options_accept_what_fastapi_accepts(client, digit_pngs, as_files):
    means = [client.post("/v1/encode", params={"invert": value, "normalize": "false"},
                         files=as_files(digit_pngs[0])).json()["mean"]
             for value in ("false", "0", "no", "off", "TRUE", "yes", "auto", "AUTO")]
    assert means[0] == means[1] == means[2] == means[3] == means[6] == means[7] != means[4] == means[5]


def test_encode_large_rgba_photo_resized(client, encode_image, as_files):
    canvas = np.full((300, 200, 4), 255, np.uint8)
    canvas[100:200, 90:110, :3] = 0  # a dark "1" on white
    response = client.post("/v1/encode", params={"normalize": "true"}, files=as_files(encode_image(canvas)))
    assert response.status_code == 200, response.text
    assert np.asarray(response.json()["mean"]).shape[0] == 1


def test_reconstruct_json_equals_signature_call(client, signatures, digits):
    response = client.post("/v1/reconstruct", params={"output": "probs"}, json={"images": digits[..., 0].tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    reference = signatures["reconstruct"](images=digits)
    assert body["output"] == "probs"
    np.testing.assert_allclose(body["images"], reference["probs"].numpy()[..., 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body["mean"], reference["mean"].numpy(), rtol=1e-5, atol=1e-6)


def test_reconstruct_uploads_png_grid(client, digit_pngs, as_files):
    response = client.post("/v1/reconstruct", params={"format": "png"}, files=as_files(*digit_pngs[:5]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (3 * 28, 2 * 28)  # 3 columns, 2 rows


def test_reconstruct_uploads_json_modes(client, signatures, digits, digit_pngs, as_files):
    response = client.post("/v1/reconstruct", files=as_files(*digit_pngs))
    assert response.status_code == 200, response.text
    expected = signatures["reconstruct"](images=digits)["mode"].numpy()[..., 0]
    np.testing.assert_array_equal(response.json()["images"], expected)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
            + b"\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.mark.parametrize("payload,status,detail", [
    (b"definitely not an image", 400, "is not an image in an accepted format (PNG, JPEG, GIF, BMP, TIFF, WEBP)"),
    (b"", 400, "is empty"),
    (bomb_png(8_000, 8_000), 413, "is 8000x8000 pixels, over the limit of 4000000"),
    (bomb_png(100_000, 100_000), 413, "decompression bomb"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "looks like PNG but its header is malformed"),
], ids=["not_image", "empty", "over_pixel_limit", "decompression_bomb", "broken_header"])
def test_encode_bad_upload_rejected(client, as_files, payload, status, detail):
    response = client.post("/v1/encode", files=as_files(payload))
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


@pytest.mark.parametrize("width,height", [(200_000, 1), (1, 20_000), (3, 2_000)])
def test_encode_extreme_aspect_ratio_rejected(client, as_files, encode_image, width, height):
    """Within the pixel limit but no digit is 200000x1: refused before it is decoded."""
    response = client.post("/v1/encode", files=as_files(encode_image(np.full((height, width), 255, np.uint8))))
    assert response.status_code == 400, response.text
    assert f"is {width}x{height} pixels: the longer side may be at most 20 times" in response.json()["detail"]


def test_encode_wide_image_within_aspect_limit_fitted(client, as_files, encode_image):
    """20:1, the most allowed: fitted into 28x28 without first padding it to a huge square."""
    wide = np.full((100, 2000), 255, np.uint8)
    response = client.post("/v1/encode", params={"normalize": "false"}, files=as_files(encode_image(wide)))
    assert response.status_code == 200, response.text
    assert len(response.json()["mean"]) == 1


def test_encode_truncated_png_rejected(client, digit_pngs, as_files):
    response = client.post("/v1/encode", files=as_files(digit_pngs[0][:60]))
    assert response.status_code == 400, response.text
    assert "could not be decoded" in response.json()["detail"]


def test_encode_multipart_without_files_rejected(client):
    response = client.post("/v1/encode", data={"note": "no file here"}, files={"x": ("", b"", "text/plain")})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("the multipart body has no files")


def test_encode_malformed_multipart_rejected(client):
    response = client.post("/v1/encode", content=b"not multipart at all",
                           headers={"content-type": "multipart/form-data; boundary=abc"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == "Invalid multipart data."  # Starlette's form parser says so


@pytest.mark.parametrize("body,status,detail", [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "request body is empty"),
    (b"[1, 2]", 422, "must be an object"),
    (b'{"pictures": []}', 422, "no 'images' field"),
    (b'{"images": []}', 422, "non-empty list"),
    (b'{"images": [[1, 2, 3]]}', 422, "must have shape [28, 28]"),
    (b'{"images": [[["a"]]]}', 422, "holds strings; its values must be JSON numbers"),
    (b'{"images": [' + b"[" + b",".join([b"[" + b",".join([b"2"] * 28) + b"]"] * 28) + b"]]}", 422, "in [0, 1]"),
    (b"[" * 5000 + b"]" * 5000, 400, "malformed JSON"),
    (b'{"images": [[[' + b"1" * 400 + b"]]]}", 400, "malformed JSON"),  # beyond 64 bits: orjson refuses it
], ids=["malformed", "empty", "not_object", "no_images", "no_items", "wrong_shape", "not_numbers", "out_of_range",
        "nested_too_deep", "integer_too_large"])
def test_encode_bad_json_rejected(client, body, status, detail):
    response = client.post("/v1/encode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


def test_encode_too_many_images_rejected(make_client, digits, digit_pngs, as_files):
    client = make_client(max_images=4, batch_max_size=4)
    response = client.post("/v1/encode", json={"images": digits[:5, ..., 0].tolist()})
    assert response.status_code == 422, response.text
    assert "has 5 items, the limit is 4" in response.json()["detail"]
    response = client.post("/v1/encode", files=as_files(*digit_pngs[:5]))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "the multipart body has 5 files, the limit is 4 (VAE_MAX_IMAGES)"


def test_encode_body_over_limit_rejected(make_client, digit_pngs, as_files):
    client = make_client(max_images=4, batch_max_size=4)
    response = client.post("/v1/encode", content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "the limit is 8388608" in response.json()["detail"]


def test_encode_serves_after_bad_input(client, digits):
    client.post("/v1/encode", content=b"{broken", headers={"content-type": "application/json"})
    client.post("/v1/encode", files={"files": ("x.png", b"junk", "image/png")})
    response = client.post("/v1/encode", json={"images": digits[:1, ..., 0].tolist()})
    assert response.status_code == 200, response.text
