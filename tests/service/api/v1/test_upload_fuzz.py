"""Seeded mutation fuzz of image uploads through real HTTP (uvicorn): no mutated file may get a 5xx, every file's
outcome is checked, and the service keeps serving. Files go 8 to a multipart request over one keep-alive
connection, so 2,000+ files fit in well under a minute; a 4xx request is then retried file by file so that each
file's own outcome is known. The fuzz loop's client is http.client with the multipart body written here: half the
time per request of httpx's (the server's side is the same)."""

import http.client
import io
import json
import random

import httpx
import numpy as np
import pytest
from PIL import Image

ACCEPTED = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
REJECTED = ["PPM", "XBM", "SGI", "EPS", "IM", "DDS", "PCX", "TGA", "ICO"]
FILES_PER_FORMAT = 150  # 15 formats x 150 = 2,250 mutated files
PER_REQUEST = 8
BOUNDARY = b"fuzz-0d7c4b1e9a3f5862"


def seed_image(format: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = (rng.random((28, 28)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if format in ("XBM",):
        image = image.convert("1")
    elif format in ("EPS", "ICO", "TGA", "SGI", "PCX", "DDS"):
        image = image.convert("RGB" if format in ("EPS", "DDS") else "L")
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, overwrite, insert, delete or truncate: more often near the start, where the headers are."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        head = min(len(data), 64) if rng.random() < 0.7 else len(data)
        at = rng.randrange(max(head, 1))
        choice = rng.random()
        if choice < 0.35 and data:
            data[at % len(data)] ^= 1 << rng.randrange(8)
        elif choice < 0.55 and data:
            data[at % len(data)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif choice < 0.7:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice < 0.85:
            del data[at:at + rng.randint(1, 16)]
        else:
            data = data[:rng.randrange(len(data) + 1)]
    return bytes(data)


def fuzz_cases() -> list[tuple[str, str, bytes]]:
    rng = random.Random(20261203)
    cases = []
    for format in ACCEPTED + REJECTED:
        seed = seed_image(format)
        cases += [(format, f"{format.lower()}-{i}", mutate(seed, rng)) for i in range(FILES_PER_FORMAT)]
    return cases


@pytest.fixture(scope="module")
def server(live_server):
    return live_server()


class Answer:
    def __init__(self, response: http.client.HTTPResponse):
        self.status_code, self.content = response.status, response.read()
        self.text = self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


def multipart(batch: list[tuple[str, str, bytes]]) -> bytes:
    """The `files` fields of a multipart/form-data body, one per file, as httpx writes them."""
    parts = [b'--%s\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\n'
             b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (BOUNDARY, name.encode(), data)
             for _, name, data in batch]
    return b"".join(parts) + b"--%s--\r\n" % BOUNDARY


def post(client: http.client.HTTPConnection, batch: list[tuple[str, str, bytes]]) -> Answer:
    client.request("POST", "/v1/encode", multipart(batch),
                   {"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"})
    return Answer(client.getresponse())


def get(client: http.client.HTTPConnection, path: str) -> Answer:
    client.request("GET", path)
    return Answer(client.getresponse())


def test_mutated_uploads_never_5xx(server):
    cases = fuzz_cases()
    assert len(cases) >= 2000
    assert not any(BOUNDARY in data for _, _, data in cases)
    outcomes: dict[int, int] = {}
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # kept alive (reopened after a close)
    try:
        for start in range(0, len(cases), PER_REQUEST):
            batch = cases[start:start + PER_REQUEST]
            response = post(client, batch)
            assert response.status_code < 500, (batch[0][1], response.text)
            if response.status_code == 200:
                assert len(response.json()["mean"]) == len(batch)
                outcomes[200] = outcomes.get(200, 0) + len(batch)
                continue
            assert response.status_code in (400, 413, 422), response.text
            for case in batch:  # which files were bad, and is each answer a clear 4xx naming its file?
                single = post(client, [case])
                # 422: decoded, but no digit in it (service.api.v1.preprocess)
                assert single.status_code in (200, 400, 413, 422), (case[1], single.text)
                outcomes[single.status_code] = outcomes.get(single.status_code, 0) + 1
                if single.status_code != 200:
                    assert repr(case[1]) in single.json()["detail"], single.text
            assert get(client, "/readyz").status_code == 200
    finally:
        client.close()
    assert sum(outcomes.values()) == len(cases)
    assert outcomes.get(400, 0) > 500 and outcomes.get(200, 0) > 100, outcomes  # both outcomes well exercised


@pytest.mark.parametrize("format", REJECTED)
def test_valid_files_in_rejected_formats_named(server, format):
    response = httpx.post(f"{server.url}/v1/encode", files={"files": ("x", seed_image(format), "image/x")})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "accepted formats are PNG, JPEG, GIF, BMP, TIFF, WEBP" in detail or "not an image" in detail


def test_issue_example_ppm_is_400_and_connection_kept(server):
    bad = b"P5\n2@ 28\n255\n" + b"\x00" * 784
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/v1/encode", files={"files": ("bad.ppm", bad, "image/x-portable-graymap")})
        assert response.status_code == 400 and "PPM" in response.json()["detail"]
        assert response.headers.get("connection") != "close"
        assert client.get("/readyz").status_code == 200  # same keep-alive connection
