"""Test-set ELBO (analytic KL) and the IWAE estimate of -log p(x), in nats per image, computed through
two plain functions, encode -> (mean, scale_tril) and decode -> logits, so that the same code measures a
run's Keras models and an exported SavedModel's signatures (the maths is training.signatures.score_batch);
and the calibration the service scores against."""

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf

import contract
from contract.likelihood import BACKGROUND_SMOOTHING, background_log_prob, fit_background
from training.signatures import SCORE_CHUNK, VAEServingModule, score_batch

log = logging.getLogger(__name__)
BINARIZATION_SEED = 0  # the one fixed binarization of the test set every reported figure uses
CALIBRATION_K = 32  # importance samples of the calibrated NLL: the score route's default k


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
        root = tf.saved_model.load(str(model_dir))
        model = cls.from_signatures(root.signatures["encode"], root.signatures["decode"])
        model.root = root  # a tf.function that outlives the loaded object would find its variables deleted
        return model

    @classmethod
    def from_keras(cls, vae):
        """A run's Keras body models, through the same tf.Module the export saves."""
        module = VAEServingModule(vae.encoder_body, vae.decoder_body, vae.config.encoded_size)
        return cls.from_signatures(module.encode, module.decode)


def score(model, x, k, seed=0, batch_size=100, chunk=SCORE_CHUNK):
    """score_batch over x (N, 28, 28, 1) in batches; image i gets the noise seed `seed + i`, as in a score request
    of the same images with that seed. Returns numpy arrays (N,) per score."""
    fn = tf.function(lambda xb, seeds: score_batch(model.encode, model.decode, xb, k, seeds, chunk))
    out = {}
    for lo in range(0, len(x), batch_size):
        xb = x[lo : lo + batch_size]
        seeds = np.arange(seed + lo, seed + lo + len(xb), dtype=np.int64)
        for name, value in fn(tf.constant(xb, tf.float32), tf.constant(seeds)).items():
            out.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def evaluate(model, x, k=100, batch_size=100, chunk=SCORE_CHUNK, sampling_seed=0,
             binarization_seed=BINARIZATION_SEED, progress_every=10):
    """Metrics over binarized images x (N, 28, 28, 1), binarized with binarization_seed (recorded only).
    Image i's k posterior samples come from the stateless seed sampling_seed + i (see `score`); they serve both the
    ELBO's expectation and IWAE_k."""
    start = time.time()
    parts = []
    for lo in range(0, len(x), batch_size * progress_every if progress_every else len(x)):
        part = score(model, x[lo : lo + batch_size * (progress_every or len(x))], k, sampling_seed + lo, batch_size,
                     chunk)
        parts.append(part)
        if progress_every:
            done = lo + len(part["nll"])
            log.info("evaluated %d/%d images: ELBO %.2f, IWAE(k=%d) %.2f nats (%.0fs)", done, len(x),
                     np.mean(np.concatenate([p["elbo"] for p in parts])), k,
                     np.mean(np.concatenate([p["nll"] for p in parts])), time.time() - start)
    scores = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return Metrics(
        test_elbo_nats=float(np.mean(scores["elbo"])),
        test_nll_iwae_nats=float(np.mean(scores["nll"])),
        test_kl_nats=float(np.mean(scores["kl"])),
        test_distortion_nats=float(np.mean(scores["distortion"])),
        iwae_k=k,
        test_images=len(x),
        binarization_seed=binarization_seed,
        sampling_seed=sampling_seed,
        seconds=round(time.time() - start, 1),
    )


CALIBRATION_LEVELS = (0, 0.1, 0.25, 0.5, *range(1, 100), 99.5, 99.75, 99.9, 100)
def background_block(nll, x, train_images, smoothing=BACKGROUND_SMOOTHING):
    """contract.Background: the fitted pixel probabilities and the percentiles of llr = -nll - log p_bg(x) over the
    test images x whose NLL is `nll`."""
    probs = fit_background(train_images, smoothing)
    llr = -np.asarray(nll, np.float64) - background_log_prob(x, probs)
    return contract.Background(
        fitted_on=f"MNIST training set, {len(train_images)} images, pixel/255 as soft labels", smoothing=smoothing,
        probs=[float(p) for p in probs], images=len(x), levels=[float(v) for v in CALIBRATION_LEVELS],
        values=[float(v) for v in np.maximum.accumulate(np.percentile(llr, CALIBRATION_LEVELS))])


def calibrate(model, images, k=CALIBRATION_K, seed=0, train_images=None):
    """contract.Calibration of the NLL score on test images as the service scores them: uint8 pixels / 255, grey
    values scored as given (not binarized), k importance samples, image i with seed `seed + i`. With uint8
    train_images, also the likelihood-ratio background model and its llr percentiles on the same test images."""
    start = time.time()
    x = images.astype(np.float32) / 255.0
    nll = score(model, x, k, seed)["nll"]
    values = np.percentile(nll, CALIBRATION_LEVELS)
    log.info("calibrated on %d images at k=%d in %.0fs: median NLL %.2f, 99th percentile %.2f", len(x), k,
             time.time() - start, np.median(nll), values[CALIBRATION_LEVELS.index(99)])
    return contract.Calibration(score="nll_iwae", k=k, seed=seed, images=len(x), pixels="grey as given (pixel/255)",
                                levels=[float(v) for v in CALIBRATION_LEVELS],
                                values=[float(v) for v in np.maximum.accumulate(values)],
                                background=None if train_images is None else background_block(nll, x, train_images))
