"""Export a run as a SavedModel in the TF Serving layout <base>/<name>/<version>/, plus metadata.json.

The SavedModel holds training.signatures.VAEServingModule (the signatures and the maths they embed);
loading it needs TensorFlow only."""

import datetime
import logging
import pathlib
import platform
import shutil
import subprocess
import tempfile

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import contract
from training.model import IMAGE_SHAPE, VAE, ModelConfig
from training.signatures import VAEServingModule, signature_schema
from training.train import checkpoint_hash, read_history, restore_weights

log = logging.getLogger(__name__)


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def next_version(model_base):
    versions = [int(p.name) for p in pathlib.Path(model_base).glob("*") if p.name.isdigit()]
    return max(versions, default=0) + 1


def restore_from_saved_model(model_dir):
    """The Keras models with the weights of an exported version (its variables are a checkpoint whose root is the
    VAEServingModule: children encoder_body and decoder_body), its training record and the checkpoint path. For
    re-exporting a model with newer signatures when its training run is gone."""
    model_dir = pathlib.Path(model_dir)
    meta = contract.read_metadata(model_dir)
    training = dict(meta["training"])
    vae = VAE(ModelConfig(**training["model"]))
    checkpoint = tf.train.Checkpoint(encoder_body=vae.encoder_body, decoder_body=vae.decoder_body)
    path = str(model_dir / contract.VARIABLES_DIR / "variables")
    checkpoint.read(path).assert_existing_objects_matched().expect_partial()
    history = training.pop("history", [])
    training.pop("epochs_completed", None)
    training["weights_from"] = f"{meta['model_name']} version {meta['model_version']} ({model_dir})"
    return vae, training, path, history


def training_record(version_dir) -> dict | None:
    """The training record in a version folder's metadata.json, or None if there is none, the folder is not here (a
    path relative to the working directory, as --init-from records it) or its metadata is unreadable (logged)."""
    path = pathlib.Path(version_dir) if version_dir else None
    if path is None or not (path / contract.METADATA_FILE).is_file():
        return None
    try:
        return contract.read_metadata(path).get("training") or None
    except contract.MetadataError as err:
        log.warning("no training record from %s: %s", path, err)
        return None


def origin_record(init_from, weights: str | None = None) -> dict | None:
    """training_record(init_from), for a run that started from that folder's weights: None if the folder now holds
    other weights than `weights` (the checkpoint hash the run recorded; runs from before it recorded none)."""
    record = training_record(init_from)
    if record is not None and weights and checkpoint_hash(init_from) != weights:
        log.warning("%s holds other weights than the run started from: its training record is left out", init_from)
        return None
    return record


def earlier_stages(init_from, weights: str | None = None) -> list[dict]:
    """The training records behind a run's --init-from version, newest first: that version's own record, then the
    earlier stages it keeps (origin_record's). [] when the run started from scratch or no record is at hand. A
    record's free-text `note` is left out: it was written about that version's own list of stages."""
    record = {key: value for key, value in (origin_record(init_from, weights) or {}).items() if key != "note"}
    return [record, *(record.pop("earlier_stages", None) or [])] if record else []


def export_run(run_dir, base_dir="models", model_name="mnist_vae", version=None, overwrite=False, from_model=None):
    """Write <base_dir>/<model_name>/<version>/ (SavedModel + metadata.json) and return its path. from_model: take the
    weights from that exported version folder instead of run_dir's latest checkpoint."""
    if from_model:
        vae, config, checkpoint, history = restore_from_saved_model(from_model)
    else:
        vae, config, checkpoint = restore_weights(run_dir)
        history = read_history(run_dir)
        init_from = (config.get("train") or {}).get("init_from")
        if stages := earlier_stages(init_from, config.get("init_from_checkpoint_hash")):
            config = {**config, "earlier_stages": stages}
    model_base = pathlib.Path(base_dir) / model_name
    version = version or next_version(model_base)
    target = model_base / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass --overwrite or another --version")

    d = vae.config.encoded_size
    module = VAEServingModule(vae.encoder_body, vae.decoder_body, d)
    metadata = {
        "schema_version": contract.SCHEMA_VERSION,
        "model_name": model_name,
        "model_version": version,
        "latent_size": d,
        "image_shape": list(IMAGE_SHAPE),
        "signatures": signature_schema(module),
        "default_signature": contract.DEFAULT_SIGNATURE,
        "training": {**config, "epochs_completed": len(history), "checkpoint": str(checkpoint), "history": history},
        "metrics": None,  # filled in by `python -m training evaluate --update-metadata`
        "calibration": None,  # likewise (contract.Calibration)
        "versions": {"tensorflow": tf.__version__, "tensorflow_probability": tfp.__version__,
                     "tf_keras": tf_keras.__version__, "python": platform.python_version()},
        "git_commit": _git_commit(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    # Save beside the target and rename, so a crash never leaves a half-written version to be served.
    model_base.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_base))
    signatures = {name: getattr(module, name) for name in contract.signatures_for(contract.SCHEMA_VERSION)}
    tf.saved_model.save(module, str(tmp), signatures={contract.SERVING_DEFAULT: module.encode, **signatures})
    contract.write_metadata(tmp, metadata)
    tmp.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


read_metadata = contract.read_metadata
write_metadata = contract.write_metadata
