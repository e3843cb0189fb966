"""The bundled version 2's score signature against the training evaluation, its seeds, batching and calibration.

Uses the committed model and 300 real MNIST test digits (tests/service/fixtures/mnist_test_digits.npz), not the
MNIST folder."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

import contract
from training.evaluate import Model, evaluate, score
from training.signatures import score_batch

REPO = pathlib.Path(__file__).resolve().parents[2]
V2 = REPO / "models" / "mnist_vae" / "2"
K = 32


@pytest.fixture(scope="module")
def v2():
    """(the loaded SavedModel, evaluate's Model over its encode and decode signatures): one load serves both."""
    model = Model.from_saved_model(V2)
    return model.root, model


@pytest.fixture(scope="module")
def digits():
    """48 real test digits, grey (pixel / 255) as the score route gets them, and binarized at 0.5 as evaluate's."""
    images = np.load(REPO / "tests" / "service" / "fixtures" / "mnist_test_digits.npz")["images"][:48]
    grey = images[..., None].astype(np.float32) / 255.0
    return grey, (grey > 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def digit_nll(v2, digits):
    """The score signature's NLL of the 48 grey digits, image i with seed i, as the service scores them."""
    root, _ = v2
    return call(root, digits[0], np.arange(len(digits[0])))["nll"]


def call(root, images, seeds, k=K):
    out = root.signatures["score"](images=tf.constant(images), k=tf.constant(k, tf.int32),
                                   seeds=tf.constant(seeds, tf.int64))
    return {name: value.numpy() for name, value in out.items()}


def test_signature_matches_training_evaluation_per_image(v2, digits):
    """Same images, same seeds (image i: seed + i): the exported signature and `python -m training evaluate`'s code
    (over the encode and decode signatures) agree per image to float32 rounding."""
    root, model = v2
    for x in digits:
        x = x[:16]  # two batches of 8 below: image i's seed carries across the batch boundary
        ours = call(root, x, np.arange(5, 5 + len(x)))
        theirs = score(model, x, K, seed=5, batch_size=8)
        for name in ("elbo", "kl", "distortion", "nll"):
            np.testing.assert_allclose(ours[name], theirs[name], atol=2e-3, rtol=0)
        np.testing.assert_allclose(ours["elbo"], ours["kl"] + ours["distortion"], atol=1e-3)
        # IWAE_k is the tighter bound (per image only in expectation: the ELBO's KL is analytic, not sampled).
        assert ours["nll"].mean() < ours["elbo"].mean()


def test_signature_mean_agrees_with_evaluate_metrics(v2, digits):
    """evaluate's reported means are the signature's means with the same seed; with another seed the means over 48
    digits differ by Monte Carlo noise only (measured: the per-image NLL's sd across seeds is under 1 nat at k=32,
    so the mean's is under 0.15; tolerance 0.5 nats)."""
    root, model = v2
    _, x = digits
    metrics = evaluate(model, x, k=K, batch_size=16, sampling_seed=0, progress_every=0)
    ours = call(root, x, np.arange(len(x)))
    assert metrics.test_nll_iwae_nats == pytest.approx(ours["nll"].mean(), abs=1e-3)
    assert metrics.test_elbo_nats == pytest.approx(ours["elbo"].mean(), abs=1e-3)
    other = call(root, x, np.arange(1000, 1000 + len(x)))
    assert abs(other["nll"].mean() - metrics.test_nll_iwae_nats) < 0.5
    assert not np.allclose(other["nll"], ours["nll"]), "another seed draws other noise"


def test_scores_are_deterministic_and_independent_of_batching(v2, digits):
    root, _ = v2
    x, _ = digits
    batch = call(root, x[:16], np.arange(100, 116))
    again = call(root, x[:16], np.arange(100, 116))
    for name in batch:
        np.testing.assert_array_equal(batch[name], again[name])
    alone = call(root, x[7:8], [107])  # image 7 on its own with its own seed
    shuffled = call(root, x[[3, 7, 0]], [103, 107, 100])  # at another row among others
    for name in batch:
        assert alone[name][0] == pytest.approx(batch[name][7], abs=1e-3)
        assert shuffled[name][1] == pytest.approx(batch[name][7], abs=1e-3)


def test_chunking_does_not_change_the_scores(v2, digits):
    """The decodes run `chunk` at a time (memory bound): any chunk size gives the same numbers."""
    _, model = v2
    x = tf.constant(digits[0][:5])
    seeds = tf.constant(np.arange(5), tf.int64)
    big = score_batch(model.encode, model.decode, x, 12, seeds, chunk=256)
    small = score_batch(model.encode, model.decode, x, 12, seeds, chunk=7)
    for name in big:
        np.testing.assert_allclose(big[name], small[name], atol=1e-3)


def test_calibration_percentiles_are_monotone_and_match_scores(digit_nll):
    meta = contract.read_metadata(V2)
    assert meta["schema_version"] == 2 and "score" in meta["signatures"]
    calibration = contract.Calibration.model_validate(meta["calibration"])
    assert calibration.images == 10_000 and calibration.k == K
    assert calibration.levels[0] == 0 and calibration.levels[-1] == 100
    assert np.all(np.diff(calibration.levels) > 0) and np.all(np.diff(calibration.values) >= 0)
    # Real test digits scored the way the service does fall around the calibrated median, rarely beyond the 99th.
    percentile = np.interp(digit_nll, calibration.values, calibration.levels)
    assert 30 < np.median(percentile) < 70
    assert (percentile > 99).mean() <= 0.05


def test_version_1_is_untouched():
    from tensorflow.core.protobuf import saved_model_pb2

    v1 = REPO / "models" / "mnist_vae" / "1"
    meta = contract.read_metadata(v1)
    assert meta["schema_version"] == 1 and "score" not in meta["signatures"] and "calibration" not in meta
    # The signatures the SavedModel holds (the map a load's .signatures is built from), read without loading it.
    (graph,) = saved_model_pb2.SavedModel.FromString((v1 / "saved_model.pb").read_bytes()).meta_graphs
    assert "encode" in graph.signature_def and "score" not in graph.signature_def


def test_background_block_is_the_ratio_of_the_scores(v2, digits, mnist_dir):
    """calibrate(train_images=...) fits the independent-pixel Bernoulli on the training images and stores the
    percentiles of llr = -nll - log p_bg(x) of exactly the scored test images."""
    from contract.likelihood import background_log_prob, fit_background
    from training import data
    from training.evaluate import calibrate

    train_images, _ = data.load_mnist("train", mnist_dir)
    probs = fit_background(train_images)
    x = train_images.reshape(len(train_images), -1) / 255.0
    assert probs.shape == (784,) and 0 < probs.min() and probs.max() < 1
    np.testing.assert_allclose(probs, (x.sum(0) + 1) / (len(x) + 2))
    images = np.round(digits[0][:12] * 255).astype(np.uint8)
    _, model = v2
    calibration = calibrate(model, images, k=4, seed=3, train_images=train_images)
    background = calibration.background
    assert background.images == 12 and background.probs == pytest.approx(list(probs))
    nll = score(model, images.astype(np.float32) / 255.0, 4, 3)["nll"]
    llr = -nll - background_log_prob(images.astype(np.float32) / 255.0, probs)
    assert background.values[0] == pytest.approx(llr.min(), abs=1e-3)
    assert background.values[-1] == pytest.approx(llr.max(), abs=1e-3)
    assert calibrate(model, images[:2], k=2).background is None


def test_bundled_background_flags_blank_images_not_digits(v2, digits, digit_nll):
    """The stored llr percentiles: real test digits fall around the median, blank images (20 noise seeds: their k = 32
    NLL varies a lot) around the 2nd percentile, where the NLL alone puts them among the more likely digits."""
    from contract.likelihood import background_log_prob

    calibration = contract.Calibration.model_validate(contract.read_metadata(V2)["calibration"])
    background = calibration.background
    assert background.images == 10_000 and len(background.probs) == 784
    assert np.all(np.diff(background.values) >= 0)
    root, _ = v2
    probs = np.array(background.probs)
    percentile = np.interp(-digit_nll - background_log_prob(digits[0], probs), background.values,
                           background.levels)
    assert 20 < np.median(percentile) < 80 and (percentile < 1).mean() <= 0.05
    blank = np.zeros((20, 28, 28, 1), np.float32)
    nll = call(root, blank, np.arange(100, 120))["nll"]
    percentile = np.interp(-nll - background_log_prob(blank, probs), background.values, background.levels)
    assert np.median(percentile) < 3 and np.median(np.interp(nll, calibration.values, calibration.levels)) < 50
