"""Start-up and version policies, in-process (the app's lifespan through TestClient): an empty base path waits and
serves the first version that appears; a bad newest version at start falls back to the next; no servable version is
fatal; specific / all policies, `?version=`, and the model config file that pins a version at run time.

No fixed sleeps: what must not happen is checked after two whole scans of the base path (`Scans`)."""

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.serving.model import ModelContractError
from service.settings import Settings

ENCODE = {"images": [[[0.0] * 28] * 28]}


@pytest.fixture
def base(tmp_path):
    base = tmp_path / "mnist_vae"
    base.mkdir()
    return base


def app_for(base, **overrides) -> TestClient:
    return TestClient(create_app(Settings(model_base_path=base, model_poll_s=0.05, **overrides)))


def ready(client: TestClient, wait) -> TestClient:
    wait(lambda: client.get("/readyz").status_code == 200, what="ready")
    return client


class Scans:
    """Counts the registry's finished scans of the base path (its reconcile passes, every model_poll_s)."""

    def __init__(self, client: TestClient):
        registry = client.app.state.dataplane.registry
        reconcile, self.done = registry.reconcile, 0

        async def counted() -> None:
            try:
                await reconcile()
            finally:
                self.done += 1

        registry.reconcile = counted  # the poll loop looks it up on each pass

    def wait_two(self, wait) -> None:
        """Until two scans have finished from now: the second began after this call."""
        seen = self.done
        wait(lambda: self.done >= seen + 2, what="two scans of the base path")


def test_empty_base_path_waits_then_serves_the_first_version(base, model_dir, place_version, wait):
    with app_for(base) as client:
        scans = Scans(client)
        scans.wait_two(wait)
        response = client.get("/readyz")
        assert (response.status_code, response.json()["detail"]) == (503, f"no model version under {base} yet")
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/encode", json=ENCODE).status_code == 503
        (base / ".tmp-1").mkdir()  # half-written: never loaded
        (base / "1").mkdir()  # no saved_model.pb nor metadata.json yet: not a version
        scans.wait_two(wait)
        assert client.get("/readyz").status_code == 503
        (base / "1").rmdir()
        place_version(base, 1, model_dir)
        ready(client, wait)
        response = client.post("/v1/encode", json=ENCODE)
        assert (response.status_code, response.headers["x-model-version"]) == (200, "1")


def test_bad_newest_version_at_start_falls_back_to_the_next(base, model_dir, artifacts, place_version, wait):
    place_version(base, 1, model_dir)
    place_version(base, 2, artifacts["mismatch"])
    with app_for(base) as client:
        ready(client, wait)
        assert client.get("/v1/model").json()["version"] == 1
        status = {s["version"]: s for s in client.get("/v1/models/mnist_vae").json()["model_version_status"]}
        assert status["2"]["state"] == "END" and status["2"]["status"]["error_code"] == "FAILED_PRECONDITION"
        assert status["1"]["state"] == "AVAILABLE"


def test_no_servable_version_fails_the_start(base, artifacts, place_version):
    place_version(base, 1, artifacts["corrupt"])
    place_version(base, 2, artifacts["mismatch"])
    with pytest.raises(ModelContractError, match=f"no version under {base} can be served: version 2: metadata.json "
                                                 "does not match the SavedModel: .*; version 1: load failed: "):
        with app_for(base):
            pass


@pytest.fixture
def two_versions(base, model_dir, artifacts, place_version):
    place_version(base, 1, model_dir)
    place_version(base, 2, artifacts["perturbed"])
    return base


def test_specific_policy_serves_the_listed_versions(two_versions, wait):
    with app_for(two_versions, model_version_policy="specific", model_versions=(1,)) as client:
        ready(client, wait)
        response = client.post("/v1/encode", json=ENCODE)
        assert (response.headers["x-model-version"], response.json()["version"]) == ("1", 1)
        response = client.post("/v1/encode", params={"version": 2}, json=ENCODE)
        assert response.status_code == 404
        assert response.json()["detail"] == "version 2 of model mnist_vae is not loaded; loaded versions: [1]"
        assert [s["version"] for s in client.get("/v1/models/mnist_vae").json()["model_version_status"]] == ["1"]


def test_all_policy_answers_the_version_asked_for(two_versions, wait):
    with app_for(two_versions, model_version_policy="all") as client:
        ready(client, wait)  # as soon as one is available; the other follows
        wait(lambda: [s["state"] for s in client.get("/v1/models/mnist_vae").json()["model_version_status"]]
             == ["AVAILABLE", "AVAILABLE"], what="both versions available")
        default = client.post("/v1/encode", json=ENCODE)
        pinned = client.post("/v1/encode", params={"version": 1}, json=ENCODE)
        assert (default.headers["x-model-version"], pinned.headers["x-model-version"]) == ("2", "1")
        assert default.json()["mean"] != pinned.json()["mean"]
        assert client.get("/v1/model", params={"version": 1}).json()["version"] == 1
        response = client.post("/v1/encode", params={"version": "two"}, json=ENCODE)
        assert (response.status_code, response.json()["detail"]) == (422, "version must be a positive integer, "
                                                                          "got 'two'")
        assert "x-model-version" not in response.headers
        names = {p["name"] for p in client.get("/openapi.json").json()["paths"]["/v1/encode"]["post"]["parameters"]}
        assert "version" in names


def test_model_config_file_pins_and_releases_a_version_at_run_time(two_versions, tmp_path, wait):
    config = tmp_path / "models.json"
    with app_for(two_versions, model_config_file=config) as client:
        ready(client, wait)
        scans = Scans(client)
        assert client.get("/v1/model").headers["x-model-version"] == "2"
        config.write_text(json.dumps({"model_version_policy": "specific", "model_versions": [1]}))
        wait(lambda: client.get("/v1/model").headers["x-model-version"] == "1", what="pinned to 1")
        wait(lambda: client.get("/v1/models/mnist_vae/versions/2").json()["model_version_status"][0]["state"]
             == "END", what="version 2 unloaded")
        config.write_text("{not json")  # logged, and the pin stays
        scans.wait_two(wait)
        assert client.get("/v1/model").headers["x-model-version"] == "1"
        config.unlink()  # back to the settings' policy: latest
        wait(lambda: client.get("/v1/model").headers["x-model-version"] == "2", what="back to latest")


def test_unloaded_version_leaves_no_model_behind(base, model_dir, artifacts, place_version, wait):
    import gc
    import weakref

    place_version(base, 1, model_dir)
    with app_for(base) as client:
        ready(client, wait)
        for _ in range(3):
            client.post("/v1/encode", json=ENCODE)
        serving = client.app.state.dataplane.registry.routing.default.serving
        model, threads = weakref.ref(serving.model), [batcher._thread for batcher in serving.batchers.all()]
        del serving
        place_version(base, 2, artifacts["perturbed"])
        wait(lambda: client.get("/v1/models/mnist_vae/versions/1").json()["model_version_status"][0]["state"]
             == "END", what="version 1 unloaded")
        assert not any(thread.is_alive() for thread in threads)  # its batchers stopped
        gc.collect()
        assert model() is None, "version 1's model is still referenced"
