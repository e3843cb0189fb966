"""End to end: `python -m service` (uvicorn, uvloop, httptools) in a subprocess, driven over real HTTP."""

import asyncio
import io
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import REPO_ROOT
from tests.ports import free_port
from tests.service.drawing import draw_digit, encoded

pytestmark = pytest.mark.slow  # starts other processes or drives a browser


@pytest.fixture(scope="module")
def server(real_model_dir):
    port = free_port()
    env = {**os.environ, "VAE_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--model-dir",
                                str(real_model_dir)],
                               cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    startup = []  # (readyz, healthz, encode) statuses and Retry-After seen while the port is open but not ready
    while True:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "service not ready after 90 s"
        try:
            ready = httpx.get(f"{url}/readyz")
            if ready.status_code == 200:
                break
            encode = httpx.post(f"{url}/v1/encode", json={"images": [[[0.0] * 28] * 28]})
            if encode.status_code == 200:  # it became ready between the two requests
                continue
            startup.append((ready.status_code, httpx.get(f"{url}/healthz").status_code, encode.status_code,
                            encode.headers.get("retry-after"), encode.json()["detail"]))
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    yield url, startup
    process.terminate()
    process.wait(timeout=30)  # uvicorn shuts down gracefully, then re-raises SIGTERM


def test_e2e_readyz_is_503_while_warming_up(server):
    """The port opens once the model is loaded; the warm-up (seconds on a CPU) follows, alive but not ready."""
    _, startup = server
    assert startup, "the service was never seen between opening its port and being ready"
    assert set(startup) == {(503, 200, 503, "1", "the model is not loaded yet")}


def test_e2e_concurrent_uploads_each_get_own_result(server, real_model_dir, digit_pngs, digits):
    import tensorflow as tf

    signatures = tf.saved_model.load(str(real_model_dir)).signatures
    server, _ = server
    async def scenario():
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            requests = [client.post("/v1/encode", files={"files": (f"{i}.png", digit_pngs[i % 8], "image/png")})
                        for i in range(64)]
            return await asyncio.gather(*requests)

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 64
    expected = signatures["encode"](images=digits)["mean"].numpy()
    for i, response in enumerate(responses):
        np.testing.assert_allclose(response.json()["mean"][0], expected[i % 8], rtol=1e-4, atol=1e-5)


def test_e2e_samples_png_and_health(server):
    server, _ = server
    response = httpx.get(f"{server}/v1/samples", params={"n": 4, "seed": 3}, headers={"accept": "image/png"})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (56, 56)
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    metrics = httpx.get(f"{server}/metrics").text
    assert 'vae_http_requests_total{method="GET",protocol="v1",route="/v1/samples",status="200"}' in metrics


def test_e2e_drawn_jpeg_digit_normalised_by_default(server):
    """Issue 12's new user: a 7 drawn off-centre on a white 400x300 canvas, as JPEG, default options."""
    server, _ = server
    files = {"files": ("seven.jpg", encoded(draw_digit("7", (400, 300), (230, 60, 350, 260), 14), "JPEG"))}
    png = httpx.post(f"{server}/v1/reconstruct", params={"format": "png", "output": "probs"}, files=files)
    assert png.status_code == 200, png.text
    (done,) = json.loads(png.headers["x-preprocessing"])
    assert (done["inverted"], done["normalized"], done["background_removed"]) == (True, True, True)
    body = httpx.post(f"{server}/v1/reconstruct", params={"output": "probs", "include_input": "true"},
                      files=files).json()
    reconstruction = np.asarray(Image.open(io.BytesIO(png.content)), np.float32) / 255
    np.testing.assert_allclose(reconstruction, body["images"][0], atol=0.5 / 255)  # the PNG is the JSON rounded
    assert np.corrcoef(reconstruction.ravel(), np.ravel(body["inputs"][0]))[0, 1] > 0.8  # measured: 0.96
