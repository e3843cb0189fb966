"""Live rollout over real HTTP, in order on one `python -m service`: version 2 replaces version 1 under load with no
failed request and every answer from the version its header names; broken versions are refused while version 2
serves; removing version 2 rolls back to version 1."""

import asyncio
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

import contract

pytestmark = pytest.mark.slow  # one `python -m service` process, followed through a rollout


@pytest.fixture(scope="module")
def base(tmp_path_factory, model_dir, place_version):
    base = tmp_path_factory.mktemp("rollout") / "mnist_vae"
    base.mkdir()
    place_version(base, 1, model_dir)
    return base


@pytest.fixture(scope="module")
def service(base, server, wait):
    with server(base) as (url, log):
        wait(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="ready")
        yield url, log


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    return np.concatenate([digits, np.roll(digits, 4, axis=2), digits * 0.6]).astype(np.float32)  # 24 inputs


class Load:
    """`concurrency` clients posting /v1/encode in a loop on their own event loop, until stopped; every answer is
    kept: (image index, status, X-Model-Version, mean)."""

    def __init__(self, url: str, images: np.ndarray, concurrency: int = 16):
        self.url, self.images, self.concurrency = url, images, concurrency
        self.results: list[tuple[int, int, str | None, list | None]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=60,
                                     limits=httpx.Limits(max_connections=self.concurrency)) as client:
            async def worker(k: int) -> None:
                i = k
                while not self.stopping.is_set():
                    index = i % len(self.images)
                    try:
                        body = {"images": [self.images[index, ..., 0].tolist()]}
                        response = await client.post("/v1/encode", json=body)
                        ok = response.status_code == 200
                        self.results.append((index, response.status_code, response.headers.get("x-model-version"),
                                             response.json()["mean"][0] if ok else response.text))
                    except httpx.HTTPError as err:
                        self.results.append((index, -1, None, repr(err)))
                    i += self.concurrency

            await asyncio.gather(*(worker(k) for k in range(self.concurrency)))

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(60)

    def failures(self) -> list:
        return [r for r in self.results if r[1] != 200]


def served_version(url: str) -> str:
    return httpx.get(f"{url}/v1/model").headers["x-model-version"]


def test_rollout_under_load_has_no_failed_request(service, base, artifacts, place_version, version_status, wait,
                                                  images, reference_means):
    url, _ = service
    assert served_version(url) == "1"
    with Load(url, images) as load:
        wait(lambda: len(load.results) > 50, what="load running")
        place_version(base, 2, artifacts["perturbed"])
        wait(lambda: version_status(url).get("1", {}).get("state") == "END", what="version 1 unloaded")
        seen = len(load.results)
        wait(lambda: len(load.results) > seen + 50, what="load after the switch")
    assert load.failures() == [], load.failures()[:3]
    versions = [version for _, _, version, _ in load.results]
    assert set(versions) == {"1", "2"}
    switch = versions.index("2")
    assert "1" not in versions[switch + 64:], "version 1 kept answering after the switch"  # in-flight ones may finish
    for version in ("1", "2"):
        answered = [(index, mean) for index, _, v, mean in load.results if v == version]
        indices = np.array([index for index, _ in answered])
        expected = reference_means(int(version), images[indices])
        np.testing.assert_allclose([mean for _, mean in answered], expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(reference_means(1, images[:4]), reference_means(2, images[:4]), atol=1e-2)
    status = version_status(url)
    assert status["2"] == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert status["1"]["state"] == "END" and status["1"]["status"]["error_code"] == "OK"
    assert served_version(url) == "2"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'vae_batch_queue_depth{signature="encode",version="1"}' not in metrics  # its batchers are gone
    assert 'vae_model_inference_seconds_count{signature="encode",version="2"}' in metrics


def test_broken_versions_are_refused_while_the_good_one_serves(service, base, artifacts, place_version,
                                                               version_status, wait, images):
    url, log = service
    with Load(url, images, concurrency=4) as load:
        for number, artifact in ((3, "corrupt"), (4, "mismatch"), (5, "warm_up_fails")):
            place_version(base, number, artifacts[artifact])
            wait(lambda n=number: version_status(url).get(str(n), {}).get("state") == "END",
                 what=f"version {number} refused")
        time.sleep(1.0)  # ten more polls at 0.1 s: a refused version is not tried (nor logged) again
    assert load.failures() == [] and {v for _, _, v, _ in load.results} == {"2"}
    status = version_status(url)
    assert [status[v]["state"] for v in ("5", "4", "3", "2")] == ["END", "END", "END", "AVAILABLE"]
    assert status["3"]["status"]["error_code"] == "UNKNOWN"
    assert status["3"]["status"]["error_message"].startswith("load failed: ")
    assert status["4"]["status"]["error_code"] == "FAILED_PRECONDITION"
    assert "metadata.json does not match the SavedModel: encode output mean has shape [None, 16], metadata.json " \
           "implies [None, 8]" in status["4"]["status"]["error_message"]
    assert status["5"]["status"]["error_code"] == "UNKNOWN"
    assert status["5"]["status"]["error_message"].startswith("warm-up failed: InvalidArgumentError: ")
    assert "decode breaks above batch 1" in status["5"]["status"]["error_message"]
    one = httpx.get(f"{url}/v1/models/mnist_vae/versions/4").json()
    assert one["model_version_status"] == [status["4"]]
    assert httpx.get(f"{url}/readyz").status_code == 200 and served_version(url) == "2"
    metrics = httpx.get(f"{url}/metrics").text
    for number in (3, 4, 5):
        assert f'vae_model_load_failures_total{{version="{number}"}} 1.0' in metrics
        assert log.read_text().count(f"version {number} refused") == 1


def test_evaluation_written_after_the_rollout_is_taken_live(service, base, wait):
    """`evaluate --update-metadata` on a version already served: its metrics and calibration are re-read; a rewrite
    that changes anything else is refused (logged once) and the loaded copy keeps serving."""
    url, log = service
    folder = base / "2"
    metadata = contract.read_metadata(folder)
    metrics = {"test_images": 64, "iwae_k": 2, "elbo": 123.4}
    etag = httpx.get(f"{url}/v1/samples", params={"n": 1, "seed": 3}).headers["etag"]
    contract.write_metadata(folder, {**metadata, "metrics": metrics})
    wait(lambda: httpx.get(f"{url}/v1/model").json()["metrics"] == metrics, what="new metrics served")
    # the same model: its answers, and so their ETags, do not change with its evaluation
    assert httpx.get(f"{url}/v1/samples", params={"n": 1, "seed": 3}).headers["etag"] == etag
    contract.write_metadata(folder, {**metadata, "metrics": {**metrics, "elbo": 1.0}, "latent_size": 8})
    wait(lambda: "version 2: its metadata.json was rewritten with other latent_size while serving" in log.read_text(),
         what="the rewrite refused")
    time.sleep(1.0)  # ten more polls at 0.1 s: logged once
    assert log.read_text().count("version 2: its metadata.json was rewritten") == 1
    info = httpx.get(f"{url}/v1/model").json()
    assert (info["version"], info["metrics"], info["latent_size"]) == (2, metrics, metadata["latent_size"])


def test_removing_the_newest_version_rolls_back(service, base, version_status, wait, images):
    url, _ = service
    with Load(url, images, concurrency=8) as load:
        for number in (5, 4, 3, 2):
            shutil.rmtree(base / str(number))
        wait(lambda: version_status(url).get("2", {}).get("state") == "END", what="version 2 unloaded")
    assert load.failures() == []
    assert {v for _, _, v, _ in load.results} <= {"1", "2"}
    assert served_version(url) == "1"
    assert version_status(url)["1"]["state"] == "AVAILABLE"


def test_status_errors_use_tf_serving_shape(service):
    url, _ = service
    response = httpx.get(f"{url}/v1/models/other")
    assert (response.status_code, response.json()) == (404, {"error": "Could not find any versions of model other"})
    response = httpx.get(f"{url}/v1/models/mnist_vae/versions/9")
    assert (response.status_code, response.json()) == (404, {"error": "Could not find version 9 of model mnist_vae"})
    assert httpx.post(f"{url}/v1/encode", params={"version": 9}, json={"images": [[[0.0] * 28] * 28]}).json() == {
        "detail": "version 9 of model mnist_vae is not loaded; loaded versions: [1]"}
