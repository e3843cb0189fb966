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

import contract
from training import data

log = logging.getLogger(__name__)
LOG_2PI = math.log(2 * math.pi)
BINARIZATION_SEED = 0  # the one fixed binarization of the test set every reported figure uses
NOISE_STREAM = 14  # the second word of every posterior-noise seed pair (seed, NOISE_STREAM)
SCORE_CHUNK = 256  # decodes per step of the scoring loop: bounds memory whatever the batch and k
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


def posterior_noise(seeds, k, d):
    """eps (B, k, d) ~ N(0, I) with row i drawn from seeds[i] alone (stateless): the noise of an image depends on its
    own seed, never on its row in a batch or on how the k samples are chunked."""
    seeds = tf.convert_to_tensor(seeds, tf.int64)
    return tf.map_fn(lambda s: tf.random.stateless_normal(tf.stack([k, d]), seed=tf.stack([s, NOISE_STREAM])),
                     seeds, fn_output_signature=tf.float32)


def score_batch(encode, decode, images, k, seeds, chunk=SCORE_CHUNK):
    """Per image: negative ELBO (analytic KL + k-sample distortion), KL, distortion, and -IWAE_k, in nats.

    encode(images) -> (mean (B, d), scale_tril (B, d, d)); decode(latents) -> Bernoulli logits (N, ...). Pixels are
    scored as given: log p(x|z) = -sum of sigmoid cross-entropies, which for grey x in [0, 1] is the cross-entropy
    of the Bernoulli decoder with x (binarize first to get the likelihood of a binary image). The B * k decodes run
    `chunk` at a time in a tf.while_loop, so memory is bounded by `chunk` whatever B and k are. Works eagerly and
    inside a tf.function (the export's score signature is this function)."""
    mean, scale_tril = encode(images)
    b, d = tf.shape(mean)[0], tf.shape(mean)[1]
    k = tf.cast(k, tf.int32)
    eps = posterior_noise(seeds, k, d)  # (B, k, d)
    z = mean[:, None, :] + tf.einsum("bij,bkj->bki", scale_tril, eps)
    z_flat = tf.reshape(z, [b * k, d])
    x_flat = tf.reshape(tf.cast(images, tf.float32), [b, -1])
    row = tf.repeat(tf.range(b), k)
    n = b * k
    chunks = (n + chunk - 1) // chunk

    def body(c, parts):
        lo = c * chunk
        hi = tf.minimum(lo + chunk, n)
        logits = tf.reshape(decode(z_flat[lo:hi]), [hi - lo, -1])
        labels = tf.gather(x_flat, row[lo:hi])
        return c + 1, parts.write(c, -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), -1))

    parts = tf.TensorArray(tf.float32, size=chunks, infer_shape=False, element_shape=[None])
    _, parts = tf.while_loop(lambda c, _: c < chunks, body, (tf.constant(0), parts))
    log_px_z = tf.reshape(parts.concat(), [b, k])
    d_float = tf.cast(d, tf.float32)
    log_pz = -0.5 * tf.reduce_sum(tf.square(z), -1) - 0.5 * d_float * LOG_2PI
    log_qz = -0.5 * tf.reduce_sum(tf.square(eps), -1) - _log_det_scale(scale_tril)[:, None] - 0.5 * d_float * LOG_2PI
    kl = analytic_kl(mean, scale_tril)
    distortion = -tf.reduce_mean(log_px_z, 1)
    nll = -(tf.reduce_logsumexp(log_px_z + log_pz - log_qz, 1) - tf.math.log(tf.cast(k, tf.float32)))
    return {"elbo": distortion + kl, "kl": kl, "distortion": distortion, "nll": nll}


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
BACKGROUND_SMOOTHING = 1.0  # Laplace: no pixel probability is 0 or 1, so every image has a finite log p_bg


def fit_background(train_images, smoothing=BACKGROUND_SMOOTHING):
    """Pixel probabilities of an independent-pixel Bernoulli fitted on uint8 training images (pixel/255 as soft
    labels, Laplace-smoothed): p_j = (sum_i x_ij + s) / (n + 2 s)."""
    x = train_images.reshape(len(train_images), -1).astype(np.float64) / 255.0
    return (x.sum(0) + smoothing) / (len(x) + 2 * smoothing)


def background_log_prob(x, probs):
    """log p_bg(x) per image, grey x in [0, 1] as given (the service's service/likelihood_ratio.py computes the
    same)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    return x @ np.log(probs) + (1.0 - x) @ np.log1p(-probs)


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
    metrics = evaluate(model, x, k=args.k, sampling_seed=args.seed)
    print(json.dumps(dataclasses.asdict(metrics), indent=2))
    calibration = None
    if args.calibrate:
        train_images, _ = data.load_mnist("train", args.data_dir)  # the background model of the likelihood ratio
        calibration = calibrate(model, images, args.calibration_k, args.seed, train_images)
        print(calibration.model_dump_json(indent=2, exclude={"background": {"probs"}}))
    if args.update_metadata:
        meta = export.read_metadata(args.model_dir)
        meta["metrics"] = dataclasses.asdict(metrics)
        if calibration is not None:
            meta["calibration"] = calibration.model_dump()
        export.write_metadata(args.model_dir, meta)
    if args.figures_dir:
        out = pathlib.Path(args.figures_dir)
        figures.write_all(out, model, x, history)
        log.info("figures written to %s", out)
    return metrics
