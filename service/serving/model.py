"""The SavedModel behind the service: device setup, loading, the metadata contract check, numpy-in/numpy-out calls."""

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

import contract
from service.serving.errors import ModelContractError, ModelLoadError, load_error

log = logging.getLogger(__name__)


def configure_device(gpu_memory_growth: bool, intra_op_threads: int = 0) -> str:
    """Set GPU memory growth and TensorFlow's op threads (both before any op runs) and return the device in use."""
    gpus = tf.config.list_physical_devices("GPU")
    try:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, gpu_memory_growth)
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    except RuntimeError as err:  # TensorFlow already initialised in this process (a second app, in tests)
        log.warning("TensorFlow device settings unchanged: %s", err)
    device = "/GPU:0" if gpus else "/CPU:0"
    found = f"running on {device} (GPUs found: {len(gpus)})" if gpus else "no GPU found, running on CPU"
    log.info("tensorflow %s: %s (GPU memory growth: %s, intra-op threads: %s)", tf.__version__, found,
             gpu_memory_growth, intra_op_threads or "default")
    return device


class VaeModel:
    def __init__(self, root: Any, metadata: dict[str, Any], device: str, name: str | None = None,
                 saved_model_fingerprint: bytes = b""):
        """name: served under this name instead of the metadata's model_name."""
        self._root = root  # keeps the loaded variables alive
        self.signatures = root.signatures
        self.device = device
        self._name = name or metadata["model_name"]
        self._saved_model_fingerprint = saved_model_fingerprint
        self._set_metadata(metadata)

    def _set_metadata(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata
        # Identifies the exported model (not just its version number) for ETags: the metadata and TensorFlow's own
        # fingerprint of the SavedModel (checksums of the graph and the variables). Not its evaluation: metrics
        # written later (update_evaluation) change no answer.
        model = {key: value for key, value in metadata.items() if key not in contract.EVALUATION_FIELDS}
        identity = json.dumps(model, sort_keys=True).encode() + self._saved_model_fingerprint
        self.fingerprint = hashlib.sha256(identity).hexdigest()[:16]

    def update_evaluation(self, metadata: dict[str, Any]) -> list[str]:
        """Take the evaluation fields (contract.EVALUATION_FIELDS: metrics, calibration) of a rewritten metadata.json
        of this version, if nothing else in it changed. Returns the other fields that changed (then nothing is
        taken: a different model needs a new version)."""
        changed = sorted(key for key in self.metadata.keys() | metadata.keys()
                         if key not in contract.EVALUATION_FIELDS and self.metadata.get(key) != metadata.get(key))
        if not changed:
            self._set_metadata(metadata)
        return changed

    @property
    def identity(self) -> dict[str, Any]:
        """The fields every model response starts with."""
        return {"model": self.name, "version": self.version}

    @property
    def latent_size(self) -> int:
        return self.metadata["latent_size"]

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return self.metadata["model_version"]

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (B, 28, 28, 1) float32 -> mean (B, d), scale_tril (B, d, d), covariance (B, d, d)."""
        return _numpy(self.signatures["encode"](images=images))

    def decode(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        """latents (B, d) float32 -> logits, probs, mode (B, 28, 28, 1)."""
        return _numpy(self.signatures["decode"](latents=latents))

    def reconstruct(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (B, 28, 28, 1) float32 -> mean (B, d), probs, mode (B, 28, 28, 1)."""
        return _numpy(self.signatures["reconstruct"](images=images))

    def sample(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """n prior draws for a seed (same seed, same draws) -> latents (n, d), probs, mode (n, 28, 28, 1)."""
        outputs = self.signatures["sample"](num_samples=tf.constant(n, tf.int32), seed=tf.constant(seed, tf.int64))
        return _numpy(outputs)

    def has_signature(self, name: str) -> bool:
        return name in self.signatures

    def score(self, images: np.ndarray, k: int, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """images (B, 28, 28, 1) float32, k importance samples, one noise seed per row (B,) int64 -> elbo, kl,
        distortion, nll (B,) in nats; row i's scores depend on (images[i], k, seeds[i]) only."""
        outputs = self.signatures[contract.SCORE](images=images, k=tf.constant(k, tf.int32),
                                                   seeds=tf.constant(seeds, tf.int64))
        return _numpy(outputs)

    def warm_up(self, batch_sizes: Sequence[int] = (1,), threads: int = 1) -> dict[str, float]:
        """Call every signature (at every batch size given), so requests do not pay for graph and kernel setup.
        Returns each signature's model time per row at its last call (score: per decode, its second call).
        threads > 1: the signatures warm up side by side (small batches leave cores idle; TensorFlow releases the
        GIL in its ops)."""
        image_shape = self.metadata["image_shape"]
        calls = {
            "encode": lambda size: self.encode(np.zeros((size, *image_shape), np.float32)),
            "reconstruct": lambda size: self.reconstruct(np.zeros((size, *image_shape), np.float32)),
            "decode": lambda size: self.decode(np.zeros((size, self.latent_size), np.float32)),
            "sample": lambda size: self.sample(size, 0),
        }
        k = (self.metadata.get("calibration") or {}).get("k", 1)
        if self.has_signature(contract.SCORE):  # unpadded, merged only at equal k: warmed at batch 1, calibration k
            calls["score"] = lambda size: self.score(np.zeros((size, *image_shape), np.float32), k,
                                                     np.zeros(size, np.int64))
        # sample and score: one call per (n, seed) or k, not padded to the batch sizes
        sizes = {name: list(batch_sizes) for name in calls} | {"sample": [1], "score": [1, 1]}
        row_seconds: dict[str, float] = {}

        def warm(name: str) -> None:
            for size in sizes[name]:
                started = time.perf_counter()
                calls[name](size)
                # rows as the batchers count them: decodes for score (k per image)
                row_seconds[name] = (time.perf_counter() - started) / (size * (k if name == "score" else 1))

        if threads <= 1:
            for name in calls:
                warm(name)
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix=f"warm-up-v{self.version}") as pool:
                for future in [pool.submit(warm, name) for name in calls]:
                    future.result()
        return row_seconds


def _numpy(outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def read_model_metadata(model_dir: Path, version: int | None = None) -> dict[str, Any]:
    """metadata.json of a version folder, checked against the schema and, if given, the folder's version number;
    ModelContractError otherwise."""
    model_dir = Path(model_dir)
    if not (model_dir / contract.SAVED_MODEL_FILE).is_file():
        raise ModelContractError(load_error(model_dir, FileNotFoundError(f"no {contract.SAVED_MODEL_FILE}")))
    try:
        metadata = contract.read_metadata(model_dir)
    except contract.MetadataError as err:
        raise ModelContractError(f"{err}; the service needs the metadata written at export") from None
    if version is not None and metadata["model_version"] != version:
        raise ModelContractError(f"{model_dir / contract.METADATA_FILE} says model_version "
                                 f"{metadata['model_version']}, its folder is version {version}")
    return metadata


def load_model(model_dir: Path, device: str, *, version: int | None = None, name: str | None = None) -> VaeModel:
    """Load the SavedModel and check metadata.json against its signatures (and its folder's version number, if
    given); raise ModelContractError if they differ."""
    model_dir = Path(model_dir)
    metadata = read_model_metadata(model_dir, version)
    try:
        root = tf.saved_model.load(str(model_dir))
    except Exception as err:  # TensorFlow's messages seldom say which file is wrong
        raise ModelLoadError(load_error(model_dir, err)) from err
    check_contract(metadata, root.signatures)
    fingerprint = model_dir / "fingerprint.pb"
    log.info("loaded %s v%s from %s (latent size %d)", metadata["model_name"], metadata["model_version"], model_dir,
             metadata["latent_size"])
    return VaeModel(root, metadata, device, name, fingerprint.read_bytes() if fingerprint.is_file() else b"")


def check_contract(metadata: dict[str, Any], signatures: Any) -> None:
    """Fail with a message naming both values when metadata.json and the loaded signatures disagree."""
    problems = []
    if metadata.get("schema_version") not in contract.READABLE_SCHEMA_VERSIONS:
        problems.append(f"schema_version is {metadata.get('schema_version')!r}, the service reads "
                        f"{list(contract.READABLE_SCHEMA_VERSIONS)}")
    missing = [name for name in contract.signatures_for(metadata.get("schema_version", 1)) if name not in signatures]
    if missing:
        problems.append(f"signatures {missing} are missing (the model has {sorted(signatures.keys())})")
    for key in ("model_name", "model_version", "latent_size", "image_shape"):
        if key not in metadata:
            problems.append(f"metadata.json has no {key!r}")
    if problems:
        raise ModelContractError("model contract broken: " + "; ".join(problems))

    d, image_shape = metadata["latent_size"], list(metadata["image_shape"])
    shapes = {
        "encode input images": (_input_shape(signatures["encode"], "images"), [None, *image_shape]),
        "encode output mean": (_output_shape(signatures["encode"], "mean"), [None, d]),
        "encode output covariance": (_output_shape(signatures["encode"], "covariance"), [None, d, d]),
        "decode input latents": (_input_shape(signatures["decode"], "latents"), [None, d]),
        "decode output mode": (_output_shape(signatures["decode"], "mode"), [None, *image_shape]),
        "reconstruct input images": (_input_shape(signatures["reconstruct"], "images"), [None, *image_shape]),
        "sample output latents": (_output_shape(signatures["sample"], "latents"), [None, d]),
    }
    for what, (actual, expected) in shapes.items():
        if actual != expected:
            problems.append(f"{what} has shape {actual}, metadata.json implies {expected}")
    if problems:
        raise ModelContractError("metadata.json does not match the SavedModel: " + "; ".join(problems))


def _input_shape(signature: Any, name: str) -> list | None:
    spec = signature.structured_input_signature[1].get(name)
    return None if spec is None else spec.shape.as_list()


def _output_shape(signature: Any, name: str) -> list | None:
    spec = signature.structured_outputs.get(name)
    return None if spec is None else spec.shape.as_list()
