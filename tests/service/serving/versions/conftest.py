"""Model version folders for the rollout tests, made with TensorFlow alone (no TFP, no training run), and a real
`python -m service` following a temporary base path.

- `perturbed`: version 1 with every variable scaled (different weights, the same signatures);
- `corrupt`: version 1 with a truncated saved_model.pb;
- `mismatch`: version 1 whose metadata.json claims another latent size;
- `warm_up_fails`: a SavedModel that passes the contract check but whose decode signature fails above batch 1.
`place()` copies one into a base path as version N the way exports do: into a hidden temp folder, then a rename."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

import contract
from service.settings import REPO_ROOT
from tests.ports import free_port


@pytest.fixture(scope="session")
def artifacts(model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    import tensorflow as tf

    root_dir = tmp_path_factory.mktemp("artifacts")
    metadata = contract.read_metadata(model_dir)
    made = {}

    loaded = tf.saved_model.load(str(model_dir))
    variables = {id(v): v for fn in loaded.signatures.values() for v in fn.variables}.values()
    assert variables, "version 1's signatures capture no variables"
    for variable in variables:
        variable.assign(variable.numpy() * 1.05 + 0.01)
    made["perturbed"] = root_dir / "perturbed"
    tf.saved_model.save(loaded, str(made["perturbed"]), signatures=dict(loaded.signatures))
    contract.write_metadata(made["perturbed"], metadata)

    made["corrupt"] = shutil.copytree(model_dir, root_dir / "corrupt")
    pb = made["corrupt"] / contract.SAVED_MODEL_FILE
    pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 3])

    made["mismatch"] = shutil.copytree(model_dir, root_dir / "mismatch")
    contract.write_metadata(made["mismatch"], {**metadata, "latent_size": metadata["latent_size"] // 2})

    made["warm_up_fails"] = root_dir / "warm_up_fails"
    save_warm_up_fails(made["warm_up_fails"], metadata["latent_size"])
    contract.write_metadata(made["warm_up_fails"], metadata)
    return made


def save_warm_up_fails(path: Path, d: int) -> None:
    """Right names and shapes everywhere (the contract check passes); decode asserts batch size 1."""
    import tensorflow as tf

    images, latents = tf.TensorSpec([None, 28, 28, 1], tf.float32), tf.TensorSpec([None, d], tf.float32)

    class DecodeBreaksAboveOne(tf.Module):
        @tf.function(input_signature=[images])
        def encode(self, images):
            n = tf.shape(images)[0]
            eye = tf.eye(d, batch_shape=[n])
            return {"mean": tf.zeros([n, d]), "scale_tril": eye, "covariance": eye}

        @tf.function(input_signature=[latents])
        def decode(self, latents):
            n = tf.shape(latents)[0]
            with tf.control_dependencies([tf.debugging.assert_less(n, 2, message="decode breaks above batch 1")]):
                probs = tf.fill([n, 28, 28, 1], 0.5)
            return {"logits": tf.zeros_like(probs), "probs": probs, "mode": tf.zeros_like(probs)}

        @tf.function(input_signature=[images])
        def reconstruct(self, images):
            return {"mean": tf.zeros([tf.shape(images)[0], d]), "probs": images, "mode": images}

        @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int64)])
        def sample(self, num_samples, seed):
            probs = tf.fill([num_samples, 28, 28, 1], 0.5)
            return {"latents": tf.zeros([num_samples, d]), "probs": probs, "mode": probs}

    module = DecodeBreaksAboveOne()
    tf.saved_model.save(module, str(path), signatures={name: getattr(module, name) for name in
                                                       ("encode", "decode", "reconstruct", "sample")})


def place(base_path: Path, number: int, source: Path) -> Path:
    """Copy a version folder into base_path/<number> as exports do: a hidden temp folder, renamed into place."""
    tmp = base_path / f".tmp-{number}-{time.monotonic_ns()}"
    shutil.copytree(source, tmp)
    metadata = json.loads((tmp / contract.METADATA_FILE).read_text())
    contract.write_metadata(tmp, {**metadata, "model_version": number})
    final = base_path / str(number)
    os.rename(tmp, final)
    return final


@pytest.fixture(scope="session")
def place_version() -> Callable[[Path, int, Path], Path]:
    return place


@contextmanager
def serve(base_path: Path, *args: str, **env: str) -> Iterator[tuple[str, Path]]:
    """`python -m service` on a free port following base_path (polling every 0.1 s); yields its URL (once it
    answers) and its log file."""
    port = free_port()
    env = {**os.environ, "VAE_LOG_LEVEL": "info", "VAE_MODEL_POLL_S": "0.1", **env}
    log_path = base_path.parent / f"service-{port}.log"
    log = open(log_path, "w+")
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--model-base-path",
                                str(base_path), *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, f"service ended: {(log.seek(0), log.read())[1][-3000:]}"
            assert time.monotonic() < deadline, "service did not answer in 120 s"
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def server() -> Callable[..., object]:
    return serve


def wait_for(condition: Callable[[], object], timeout_s: float = 120, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s"
        time.sleep(0.05)
    return value


@pytest.fixture(scope="session")
def wait() -> Callable[..., object]:
    return wait_for


def statuses(url: str, name: str = "mnist_vae") -> dict[str, dict]:
    response = httpx.get(f"{url}/v1/models/{name}")
    return {entry["version"]: entry for entry in response.json().get("model_version_status", [])}


@pytest.fixture(scope="session")
def version_status() -> Callable[..., dict]:
    return statuses


@pytest.fixture(scope="session")
def reference_means(artifacts, signatures) -> Callable[[int, np.ndarray], np.ndarray]:
    """Encoder means of each version, from calling its SavedModel directly."""
    import tensorflow as tf

    perturbed = tf.saved_model.load(str(artifacts["perturbed"])).signatures

    def means(version: int, images: np.ndarray) -> np.ndarray:
        signature = signatures if version == 1 else perturbed
        return signature["encode"](images=images.astype(np.float32))["mean"].numpy()

    return means
