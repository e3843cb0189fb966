"""The api image, run for real: healthy, non-root, no training code, read-only root filesystem, right numbers,
its static assets served, and a graceful stop that finishes the requests in flight."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin

import httpx
import numpy as np
import pytest
from PIL import Image

import contract
from tests.container.helpers import ROOT, docker, host_port, inspect, record, unique, wait_for

pytestmark = pytest.mark.container

# The version the image serves by default: the newest bundled one.
BUNDLED_DEFAULT = max(contract.version_folders(ROOT / "models" / "mnist_vae").items())[1]
FIXTURES = ROOT / "tests" / "service" / "fixtures"

# Runs inside the api image: what it must hold, and must not.
IMAGE_CONTENTS_CHECK = """
import importlib.metadata as md, importlib.util as iu, pathlib, re, sysconfig
site = pathlib.Path(sysconfig.get_path("purelib"))
for module in ("training", "tensorflow_probability", "tf_keras"):
    assert iu.find_spec(module) is None, f"{module} is installed"
for module in ("service", "contract", "tensorflow"):
    assert iu.find_spec(module) is not None, f"{module} is missing"
dists = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}
assert "tensorflow-cpu" in dists and "tensorflow" not in dists, sorted(d for d in dists if "tensorflow" in d)
leftovers = [*map(pathlib.Path, ["/app", "/src", "/build"]), *pathlib.Path("/mnt").iterdir(),
             *site.glob("*.egg-info"), *pathlib.Path("/home/vae").glob("**/build")]
leftovers = [str(p) for p in leftovers if p.exists()]
assert not leftovers, leftovers
print("ok")
"""


def test_api_image_holds_the_service_and_no_training_code(api_image):
    result = docker("run", "--rm", "--entrypoint", "python", api_image, "-c", IMAGE_CONTENTS_CHECK)
    assert result.stdout.strip() == "ok"
    assert inspect(api_image, "{{.Config.User}}") == "10001:10001"
    record("api image: service + contract, no training/TFP/tf-keras, tensorflow-cpu only, no build leftovers", 0)


@pytest.fixture(scope="module")
def api(api_image):
    """One api container, root filesystem read-only with a tmpfs at /tmp, published on a free host port.
    The health check is the image's command, polled every 2 s instead of 30 s to keep the test short."""
    name = unique("vae-api-test")
    started = time.monotonic()
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--health-interval", "2s",
           "-p", "127.0.0.1:0:8000", api_image)
    try:
        wait_for(lambda: inspect(name, "{{.State.Health.Status}}") == "healthy", 180, "api container healthy")
        record("api container (--read-only, tmpfs /tmp) healthy per its HEALTHCHECK", time.monotonic() - started)
        url = f"http://127.0.0.1:{host_port(name)}"
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120, "/readyz 200")
        record("api container ready (/readyz 200, every signature warmed)", time.monotonic() - started)
        yield name, url
    finally:
        docker("rm", "-f", name, check=False)


def test_api_runs_as_non_root_on_a_read_only_root(api):
    name, _ = api
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    assert re.search(r"^Uid:\s+10001\s", docker("exec", name, "cat", "/proc/1/status").stdout, re.MULTILINE)
    assert inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    denied = docker("exec", name, "touch", "/home/vae/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    record("api process uid 10001; root filesystem read-only", 0)


@pytest.fixture(scope="module")
def reference():
    """The bundled default version called directly on the host: the numbers the container must give."""
    import tensorflow as tf

    digits = np.stack([np.asarray(Image.open(p), np.float32) / 255.0 for p in sorted(FIXTURES.glob("*.png"))])
    signatures = tf.saved_model.load(str(BUNDLED_DEFAULT)).signatures
    encoded = signatures["encode"](images=tf.constant(digits[..., None]))
    sampled = signatures["sample"](num_samples=tf.constant(4, tf.int32), seed=tf.constant(7, tf.int64))
    return digits, {k: v.numpy() for k, v in encoded.items()}, {k: v.numpy() for k, v in sampled.items()}


def test_api_encodes_like_the_model_on_the_host(api, reference):
    _, url = api
    digits, encoded, _ = reference
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/encode", json={"images": digits.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["mean"], encoded["mean"], atol=1e-4)
    np.testing.assert_allclose(body["scale_tril"], encoded["scale_tril"], atol=1e-4)
    # The upload path (Pillow in the image): the same PNG files as multipart, one posterior mean each.
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in sorted(FIXTURES.glob("*.png"))]
    uploaded = httpx.post(f"{url}/v1/encode", files=files, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    assert np.isfinite(uploaded.json()["mean"]).all() and np.shape(uploaded.json()["mean"]) == (len(digits), 16)
    worst = np.abs(np.asarray(body["mean"]) - encoded["mean"]).max()
    record(f"encode of {len(digits)} MNIST digits equals the host's SavedModel", time.monotonic() - started,
           f"max |mean difference| {worst:.1e}")


def test_api_samples_like_the_model_on_the_host(api, reference):
    _, url = api
    _, _, sampled = reference
    started = time.monotonic()
    response = httpx.get(f"{url}/v1/samples", params={"n": 4, "seed": 7, "format": "json"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["latents"], sampled["latents"], atol=1e-5)
    images = np.asarray(body["images"] if "images" in body else body["mode"], np.float32).reshape(4, 28, 28)
    agreement = (images == sampled["mode"].reshape(4, 28, 28)).mean()
    assert agreement > 0.999, agreement
    png = httpx.get(f"{url}/v1/samples", params={"n": 16, "seed": 7, "format": "png"}, timeout=30)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    record("samples (seed 7) equal the host's SavedModel; PNG grid served", time.monotonic() - started,
           f"pixel agreement {agreement:.4f}")


def test_api_serves_its_pages_and_their_assets(api):
    """The docs (and the playground, once it exists) with every same-origin asset they reference: package data
    that only exists in the image if the wheel carries it."""
    _, url = api
    pages = {path: httpx.get(f"{url}{path}", timeout=30) for path in ("/docs", "/", "/playground")}
    assert pages["/docs"].status_code == 200 and "<html" in pages["/docs"].text.lower()
    assets = set()
    for path, response in pages.items():
        if response.status_code == 200 and "text/html" in response.headers.get("content-type", ""):
            for link in re.findall(r"""(?:src|href)=["']([^"'#]+)["']""", response.text):
                absolute = urljoin(f"{url}{path}", link)
                if absolute.startswith(f"{url}/"):  # same origin: served by the container
                    assets.add(absolute.removeprefix(url))
    assets.add("/openapi.json")
    failed = {a: httpx.get(f"{url}{a}", timeout=30).status_code for a in sorted(assets)}
    assert all(status == 200 for status in failed.values()), failed
    served = [p for p, r in pages.items() if r.status_code == 200]
    record(f"pages {served} and their {len(assets)} same-origin assets answer 200", 0, ", ".join(sorted(assets)))



def test_api_answers_kserve_v2_health_and_metadata(api):
    """What KServe's v2 clients ask first, served by the same container (the InferenceService runs this image)."""
    _, url = api
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    server = httpx.get(f"{url}/v2", timeout=10)
    assert server.status_code == 200, server.text
    name = httpx.get(f"{url}/v1/model", timeout=10).json()["name"]
    model = httpx.get(f"{url}/v2/models/{name}", timeout=10)
    assert model.status_code == 200 and model.json()["name"] == name, model.text
    record(f"KServe v2: /v2/health/ready, /v2 and /v2/models/{name} answer 200", 0)

def test_docker_stop_finishes_requests_in_flight(api):
    """SIGTERM with requests in flight: uvicorn stops accepting, finishes them, exits 0. Runs last in this module:
    it stops the container."""
    name, url = api
    n_requests, n_images = 12, 128
    # Each request decodes 128 fresh prior samples into a PNG grid; distinct seeds never share a model call, so
    # the 12 queue behind each other in the sample batcher for a few seconds.
    one = time.monotonic()
    httpx.get(f"{url}/v1/samples", params={"n": n_images, "seed": 0, "format": "png"}, timeout=60)
    one = time.monotonic() - one
    done: list[tuple[int, float]] = []
    lock = threading.Lock()
    client = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=n_requests))

    def fetch(seed: int) -> None:
        response = client.get("/v1/samples", params={"n": n_images, "seed": seed + 1, "format": "png"})
        with lock:
            done.append((response.status_code, time.monotonic()))

    def all_in_the_server() -> bool:
        """Every request answered, computing (one sample call at a time), held back by the batcher as the start of
        the next call (its carry), or waiting in the sample queue."""
        text = httpx.get(f"{url}/metrics", timeout=5).text
        queued = sum(float(v) for v in re.findall(r'^vae_batch_queue_depth\{[^}]*signature="sample"[^}]*\} (\S+)',
                                                   text, re.MULTILINE))
        return queued + len(done) >= n_requests - 2

    with client, ThreadPoolExecutor(n_requests) as pool:
        futures = [pool.submit(fetch, seed) for seed in range(n_requests)]
        wait_for(all_in_the_server, 30, "all requests received by the server", interval_s=0.05)
        stopped_at = time.monotonic()
        in_flight = n_requests - len(done)
        docker("stop", "-t", "60", name, timeout=90)
        exited_after = time.monotonic() - stopped_at
        for future in futures:
            future.result()
    statuses = [status for status, _ in done]
    last = max(t for _, t in done) - stopped_at
    assert statuses == [200] * n_requests, statuses
    assert in_flight > 0 and last > 0, "no request was in flight when the stop began: make them slower"
    assert inspect(name, "{{.State.ExitCode}}") == "0"
    assert exited_after < 60, "docker stop had to kill the container"
    record("docker stop with requests in flight: all answered 200, exit code 0", exited_after,
           f"{in_flight} of {n_requests} in flight at SIGTERM (one takes {one:.2f} s alone), the last answered "
           f"{last:.2f} s after it, container gone {exited_after:.2f} s after it")

