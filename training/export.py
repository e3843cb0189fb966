"""Export a run as a SavedModel in the TF Serving layout <base>/<name>/<version>/, plus metadata.json.

A Keras model ending in a TFP layer cannot be saved (tensorflow/probability#1604), so the exported
tf.Module tracks only the two body models (plain Keras layers) and rebuilds the distributions inside its
tf.function signatures, which return plain tensors. Loading it needs TensorFlow only."""

import datetime
import pathlib
import platform
import shutil
import subprocess
import tempfile

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

import contract
from training.evaluate import score_batch
from training.model import IMAGE_SHAPE, VAE, ModelConfig, make_prior
from training.train import read_history, restore_weights

tfpl = tfp.layers

IMAGES_SPEC = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images")


class VAEServingModule(tf.Module):
    """encode / decode / sample / reconstruct / score as tf.function signatures over the body models."""

    def __init__(self, encoder_body, decoder_body, encoded_size):
        super().__init__(name="mnist_vae")
        self.encoder_body = encoder_body
        self.decoder_body = decoder_body
        self.encoded_size = encoded_size
        latents_spec = tf.TensorSpec([None, encoded_size], tf.float32, name="latents")
        self.encode = tf.function(self._encode, input_signature=[IMAGES_SPEC])
        self.decode = tf.function(self._decode, input_signature=[latents_spec])
        self.reconstruct = tf.function(self._reconstruct, input_signature=[IMAGES_SPEC])
        self.sample = tf.function(
            self._sample,
            input_signature=[
                tf.TensorSpec([], tf.int32, name="num_samples"),
                tf.TensorSpec([], tf.int64, name="seed"),
            ],
        )
        # Per-row seeds, not one seed: the service merges requests into one batch, and image i of a request must
        # get the noise of (request seed + i) whatever its row in the merged batch.
        self.score = tf.function(
            self._score,
            input_signature=[
                IMAGES_SPEC,
                tf.TensorSpec([], tf.int32, name="k"),
                tf.TensorSpec([None], tf.int64, name="seeds"),
            ],
        )

    def _posterior(self, images):
        params = self.encoder_body(images, training=False)
        return tfpl.MultivariateNormalTriL.new(params, self.encoded_size)

    def _encode(self, images):
        q = self._posterior(images)
        return {"mean": q.mean(), "scale_tril": q.scale.to_dense(), "covariance": q.covariance()}

    def _decode(self, latents):
        p = tfpl.IndependentBernoulli.new(self.decoder_body(latents, training=False), IMAGE_SHAPE)
        return {"logits": p.distribution.logits_parameter(), "probs": p.distribution.probs_parameter(),
                "mode": p.mode()}

    def _reconstruct(self, images):
        mean = self._posterior(images).mean()
        out = self._decode(mean)
        return {"mean": mean, "probs": out["probs"], "mode": out["mode"]}

    def _score(self, images, k, seeds):
        """Per image -ELBO, KL, distortion and -IWAE_k in nats (training.evaluate.score_batch, pixels as given)."""

        def encode(x):
            q = self._posterior(x)
            return q.mean(), q.scale.to_dense()

        return score_batch(encode, lambda z: self.decoder_body(z, training=False), images, k, seeds)

    def _sample(self, num_samples, seed):
        # A stateless seed: the same (num_samples, seed) gives the same latents on every call and load.
        # The int64 seed is split into the two int32 words TFP's stateless samplers take.
        stateless_seed = tf.cast(tf.stack([tf.bitwise.right_shift(seed, 32), seed % 2**32]), tf.int32)
        latents = make_prior(self.encoded_size).sample(num_samples, seed=stateless_seed)
        out = self._decode(latents)
        return {"latents": latents, "probs": out["probs"], "mode": out["mode"]}


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=pathlib.Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _signature_schema(module):
    def spec(t):
        return {"dtype": t.dtype.name, "shape": t.shape.as_list()}

    schema = {}
    for name in contract.signatures_for(contract.SCHEMA_VERSION):
        fn = getattr(module, name).get_concrete_function()
        schema[name] = {
            "inputs": {s.name: spec(s) for s in fn.structured_input_signature[0]},
            "outputs": {k: spec(v) for k, v in fn.structured_outputs.items()},
        }
    return schema


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


def export_run(run_dir, base_dir="models", model_name="mnist_vae", version=None, overwrite=False, from_model=None):
    """Write <base_dir>/<model_name>/<version>/ (SavedModel + metadata.json) and return its path. from_model: take the
    weights from that exported version folder instead of run_dir's latest checkpoint."""
    if from_model:
        vae, config, checkpoint, history = restore_from_saved_model(from_model)
    else:
        vae, config, checkpoint = restore_weights(run_dir)
        history = read_history(run_dir)
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
        "signatures": _signature_schema(module),
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
