"""A fake of the model: a tiny SavedModel with the real one's signatures (names, dtypes and shapes from its
metadata.json), computing cheap linear maps instead of the VAE. It loads and warms up in a fraction of the real
model's time, so the batcher, codec, protocol and route tests use it; the smoke set (tests/service/smoke) and every
test about what the model answers use the real one.

Its answers are deterministic functions of the inputs with the real outputs' shapes and ranges: posterior means from
the pixels, a valid lower-triangular scale, probabilities in (0, 1), 0/1 modes, per-image scores that depend on the
image, k and its seed."""

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

import contract

IMAGE = [None, 28, 28, 1]
LATENT = 16  # the real model's latent size (export_fake checks it)


class FakeVae(tf.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.to_latent = tf.Variable(rng.normal(0, 0.05, (784, LATENT)), dtype=tf.float32)
        self.latent_bias = tf.Variable(rng.normal(0, 0.1, LATENT), dtype=tf.float32)
        self.to_pixels = tf.Variable(rng.normal(0, 1.0, (LATENT, 784)), dtype=tf.float32)

    def _encode(self, images):
        mean = tf.reshape(images, [-1, 784]) @ self.to_latent + self.latent_bias
        scale = tf.linalg.diag(0.5 + 0.1 * tf.sigmoid(mean))  # lower triangular, positive diagonal
        return mean, scale

    def _decode(self, latents):
        logits = tf.reshape(latents @ self.to_pixels, [-1, 28, 28, 1])
        probs = tf.sigmoid(logits)
        return logits, probs, tf.cast(probs > 0.5, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec(IMAGE, tf.float32, name="images")])
    def encode(self, images):
        mean, scale = self._encode(images)
        return {"mean": mean, "scale_tril": scale, "covariance": scale @ tf.linalg.matrix_transpose(scale)}

    @tf.function(input_signature=[tf.TensorSpec([None, LATENT], tf.float32, name="latents")])
    def decode(self, latents):
        logits, probs, mode = self._decode(latents)
        return {"logits": logits, "probs": probs, "mode": mode}

    @tf.function(input_signature=[tf.TensorSpec(IMAGE, tf.float32, name="images")])
    def reconstruct(self, images):
        mean, _ = self._encode(images)
        _, probs, mode = self._decode(mean)
        return {"mean": mean, "probs": probs, "mode": mode}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="num_samples"),
                                  tf.TensorSpec([], tf.int64, name="seed")])
    def sample(self, num_samples, seed):
        latents = tf.random.stateless_normal([num_samples, LATENT], tf.stack([seed, tf.constant(0, tf.int64)]))
        _, probs, mode = self._decode(latents)
        return {"latents": latents, "probs": probs, "mode": mode}

    @tf.function(input_signature=[tf.TensorSpec(IMAGE, tf.float32, name="images"),
                                  tf.TensorSpec([], tf.int32, name="k"),
                                  tf.TensorSpec([None], tf.int64, name="seeds")])
    def score(self, images, k, seeds):
        mean, _ = self._encode(images)
        _, probs, _ = self._decode(mean)
        x = tf.reshape(images, [-1, 784])
        p = tf.clip_by_value(tf.reshape(probs, [-1, 784]), 1e-6, 1 - 1e-6)
        distortion = -tf.reduce_sum(x * tf.math.log(p) + (1 - x) * tf.math.log(1 - p), axis=1)
        kl = 0.5 * tf.reduce_sum(mean**2, axis=1)
        noise = tf.cast(seeds % 1000, tf.float32) * 1e-4
        elbo = distortion + kl + noise
        return {"elbo": elbo, "kl": kl, "distortion": distortion,
                "nll": elbo - tf.math.log(tf.cast(k, tf.float32)) * 0.01}


def export_fake(real_version: Path, folder: Path) -> Path:
    """A fake of `real_version` (its metadata.json, schema 2 with calibration) in `folder`."""
    metadata = contract.read_metadata(real_version)
    assert metadata["latent_size"] == LATENT, metadata["latent_size"]
    module = FakeVae()
    signatures = {name: getattr(module, name) for name in contract.signatures_for(metadata["schema_version"])}
    signatures[contract.SERVING_DEFAULT] = module.encode
    if folder.exists():
        shutil.rmtree(folder)
    tf.saved_model.save(module, str(folder), signatures=signatures)
    (folder / contract.METADATA_FILE).write_text(json.dumps(metadata))
    return folder
