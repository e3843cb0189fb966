"""Test-set ELBO (analytic KL) and the IWAE estimate of -log p(x), in nats per image, computed through
two plain functions, encode -> (mean, scale_tril) and decode -> logits, so that the same code measures a
run's Keras models and an exported SavedModel's signatures."""

import dataclasses
import json
import logging
import math
import pathlib
import time

import numpy as np
import tensorflow as tf

from training import data

log = logging.getLogger(__name__)
LOG_2PI = math.log(2 * math.pi)
BINARIZATION_SEED = 0  # the one fixed binarization of the test set every reported figure uses


@dataclasses.dataclass
class Metrics:
    test_elbo_nats: float  # -ELBO averaged over images (a bound: -log p(x) <= this)
    test_nll_iwae_nats: float  # -IWAE_k averaged over images (a tighter bound)
    test_kl_nats: float  # the rate term KL(q(z|x) || p(z))
    test_distortion_nats: float  # -E_q[log p(x|z)]
    iwae_k: int
    test_images: int
    binarization_seed: int  # of the fixed test-set binarization
    sampling_seed: int  # of the posterior samples
    seconds: float


class Model:
    """encode(images) -> (mean (B, d), scale_tril (B, d, d)); decode(latents) -> logits (N, 28, 28, 1)."""

    def __init__(self, encode, decode):
        self.encode, self.decode = encode, decode

    @classmethod
    def from_signatures(cls, encode, decode):
        """From the export's encode and decode functions (loaded signatures or the tf.Module's own)."""

        def encode_fn(images):
            out = encode(images=images)
            return out["mean"], out["scale_tril"]

        return cls(encode_fn, lambda z: decode(latents=z)["logits"])

    @classmethod
    def from_saved_model(cls, model_dir):
        signatures = tf.saved_model.load(str(model_dir)).signatures
        return cls.from_signatures(signatures["encode"], signatures["decode"])

    @classmethod
    def from_keras(cls, vae):
        """A run's Keras body models, through the same tf.Module the export saves."""
        from training.export import VAEServingModule

        module = VAEServingModule(vae.encoder_body, vae.decoder_body, vae.config.encoded_size)
        return cls.from_signatures(module.encode, module.decode)


def _log_det_scale(scale_tril):
    """log |det L| of lower-triangular L: the sum of log |diagonal|."""
    return tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(scale_tril))), axis=-1)


def analytic_kl(mean, scale_tril):
    """KL(N(mean, L L^T) || N(0, I)) per row: 0.5 (tr(Sigma) + |mean|^2 - d - log det Sigma)."""
    d = tf.cast(tf.shape(mean)[-1], tf.float32)
    trace = tf.reduce_sum(tf.square(scale_tril), axis=[-2, -1])
    return 0.5 * (trace + tf.reduce_sum(tf.square(mean), -1) - d - 2.0 * _log_det_scale(scale_tril))


def _log_weights(model, x, mean, scale_tril, eps):
    """log p(x|z) and log p(z) - log q(z|x) for z = mean + L eps; x (B, 28, 28, 1), eps (B, c, d)."""
    b, c, d = eps.shape
    z = mean[:, None, :] + tf.einsum("bij,bcj->bci", scale_tril, eps)
    logits = tf.reshape(model.decode(tf.reshape(z, [b * c, d])), [b, c, -1])
    x_flat = tf.reshape(x, [b, 1, -1])
    labels = tf.broadcast_to(x_flat, logits.shape)
    log_px_z = -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), -1)
    log_pz = -0.5 * tf.reduce_sum(tf.square(z), -1) - 0.5 * d * LOG_2PI
    log_qz = -0.5 * tf.reduce_sum(tf.square(eps), -1) - _log_det_scale(scale_tril)[:, None] - 0.5 * d * LOG_2PI
    return log_px_z, log_pz - log_qz


def evaluate(model, x, k=100, batch_size=100, chunk=50, sampling_seed=0, binarization_seed=BINARIZATION_SEED,
             progress_every=10):
    """Metrics over binarized images x (N, 28, 28, 1), binarized with binarization_seed (recorded only).
    Memory is bounded by batch_size * chunk decodes at a time, whatever k is. The k posterior samples serve
    both the ELBO's expectation and IWAE_k."""
    start = time.time()
    rng = np.random.default_rng(sampling_seed)
    elbo, iwae, kl_sum, dist_sum = [], [], [], []
    n = len(x)
    for i, lo in enumerate(range(0, n, batch_size)):
        xb = tf.constant(x[lo : lo + batch_size])
        mean, scale_tril = model.encode(xb)
        log_px_z, log_ratio = [], []
        for c0 in range(0, k, chunk):
            eps = tf.constant(rng.standard_normal((len(xb), min(chunk, k - c0), mean.shape[-1]), dtype=np.float32))
            a, r = _log_weights(model, xb, mean, scale_tril, eps)
            log_px_z.append(a)
            log_ratio.append(r)
        log_px_z, log_ratio = tf.concat(log_px_z, 1), tf.concat(log_ratio, 1)
        kl = analytic_kl(mean, scale_tril)
        distortion = -tf.reduce_mean(log_px_z, 1)
        kl_sum.append(kl.numpy())
        dist_sum.append(distortion.numpy())
        elbo.append((distortion + kl).numpy())
        iwae.append(-(tf.reduce_logsumexp(log_px_z + log_ratio, 1) - math.log(k)).numpy())
        if progress_every and (i + 1) % progress_every == 0:
            done = lo + len(xb)
            log.info("evaluated %d/%d images: ELBO %.2f, IWAE(k=%d) %.2f nats (%.0fs)",
                     done, n, np.mean(np.concatenate(elbo)), k, np.mean(np.concatenate(iwae)), time.time() - start)
    return Metrics(
        test_elbo_nats=float(np.mean(np.concatenate(elbo))),
        test_nll_iwae_nats=float(np.mean(np.concatenate(iwae))),
        test_kl_nats=float(np.mean(np.concatenate(kl_sum))),
        test_distortion_nats=float(np.mean(np.concatenate(dist_sum))),
        iwae_k=k,
        test_images=n,
        binarization_seed=binarization_seed,
        sampling_seed=sampling_seed,
        seconds=round(time.time() - start, 1),
    )


def evaluate_command(args):
    """The `evaluate` subcommand: print the metrics as JSON; optionally write figures and metadata."""
    from training import export, figures

    if args.update_metadata and not args.model_dir:  # before the minutes of evaluation, not after
        raise FileNotFoundError("--update-metadata needs --model-dir (the SavedModel whose metadata.json to update)")
    images, _ = data.load_mnist("test", args.data_dir, limit=args.limit)
    x = data.fixed_binarization(images, seed=BINARIZATION_SEED)
    if args.model_dir:
        model = Model.from_saved_model(args.model_dir)
        history = export.read_metadata(args.model_dir)["training"].get("history", [])
    else:
        from training.train import read_history, restore_weights

        vae, _, _ = restore_weights(args.run_dir)
        model = Model.from_keras(vae)
        history = read_history(args.run_dir)
    metrics = evaluate(model, x, k=args.k)
    print(json.dumps(dataclasses.asdict(metrics), indent=2))
    if args.update_metadata:
        meta = export.read_metadata(args.model_dir)
        meta["metrics"] = dataclasses.asdict(metrics)
        export.write_metadata(args.model_dir, meta)
    if args.figures_dir:
        out = pathlib.Path(args.figures_dir)
        figures.write_all(out, model, x, history)
        log.info("figures written to %s", out)
    return metrics
