import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from PIL import Image

from training import figures
from training.evaluate import Model, evaluate
from training.signatures import analytic_kl


def test_analytic_kl_matches_tfp():
    d = 5
    rng = np.random.default_rng(0)
    mean = tf.constant(rng.normal(size=(4, d)), tf.float32)
    tril = tf.linalg.band_part(tf.constant(rng.normal(size=(4, d, d)) * 0.3, tf.float32), -1, 0)
    tril = tf.linalg.set_diag(tril, tf.exp(tf.constant(rng.normal(size=(4, d)) * 0.2, tf.float32)))
    q = tfp.distributions.MultivariateNormalTriL(mean, tril)
    p = tfp.distributions.MultivariateNormalDiag(tf.zeros(d), tf.ones(d))
    np.testing.assert_allclose(analytic_kl(mean, tril), tfp.distributions.kl_divergence(q, p), rtol=1e-5)


@pytest.fixture(scope="module")
def saved_model_metrics(saved_model, test_digits):
    # Two batches of 20 (one trace of the scoring function), decoded 8 at a time.
    return evaluate(saved_model, test_digits[0][:40], k=20, batch_size=20, chunk=8)


def test_evaluate_saved_model_gives_sane_bounds(saved_model_metrics):
    m = saved_model_metrics
    assert all(math.isfinite(v) for v in dataclasses.asdict(m).values())
    # A barely trained model: worse than a good VAE (~100), better than uniform pixels (784 ln 2 = 543).
    assert 100 < m.test_nll_iwae_nats <= m.test_elbo_nats < 543
    assert m.test_kl_nats >= 0
    assert m.test_elbo_nats == pytest.approx(m.test_kl_nats + m.test_distortion_nats, rel=1e-5)
    assert m.iwae_k == 20 and m.test_images == 40


def test_evaluate_keras_and_saved_model_agree(tiny_run, test_digits, saved_model_metrics):
    _, vae = tiny_run
    keras = evaluate(Model.from_keras(vae), test_digits[0][:40], k=20, batch_size=20, chunk=8)
    assert keras.test_elbo_nats == pytest.approx(saved_model_metrics.test_elbo_nats, abs=1e-3)
    assert keras.test_nll_iwae_nats == pytest.approx(saved_model_metrics.test_nll_iwae_nats, abs=1e-3)


def test_evaluate_elbo_agrees_with_keras_validation_loss(tiny_run, test_digits):
    """The Keras model's loss (1-sample reconstruction + exact KL regularizer) estimates the same negative ELBO."""
    from training.model import negative_log_likelihood

    _, vae = tiny_run
    x = test_digits[0][:64]
    vae.vae.compile(loss=negative_log_likelihood)
    ours = evaluate(Model.from_keras(vae), x, k=50, batch_size=32, chunk=25).test_elbo_nats
    # Ten 1-sample estimates over the 64 images: ten batches of one evaluate call, whose loss is the mean of the
    # batches' (as the mean of ten calls was, without nine more calls' set-up).
    tiled = np.concatenate([x] * 10)
    keras = vae.vae.evaluate(tiled, tiled, batch_size=64, verbose=0)
    assert ours == pytest.approx(keras, rel=0.01)


def test_figures_are_pngs_of_digit_grids(saved_model, tiny_run, test_digits, tmp_path):
    from training.train import read_history

    run_dir, _ = tiny_run
    figures.write_all(tmp_path, saved_model, test_digits[0][:10], figures.lineage({"history": read_history(run_dir)}))
    recon = Image.open(tmp_path / "reconstructions.png")
    assert recon.format == "PNG" and recon.size == (10 * 30 + 2, 2 * 30 + 2)
    samples = Image.open(tmp_path / "prior_samples.png")
    assert samples.size == (10 * 30 + 2, 4 * 30 + 2)
    assert np.asarray(samples).std() > 10, "sample grid is not blank"
    assert Image.open(tmp_path / "training_curve.png").format == "PNG"


def test_the_training_curve_follows_a_version_through_its_stages(tmp_path):
    """A fine-tuned version's curve: the run of the version it started from, then its recorded stages, oldest
    first, each named by its objective; an origin that is not at hand is left out."""
    def run(epochs, objective="iwae", k=None, init_from=None, loss=90.0, validation="held-out", train_limit=None):
        history = [{"epoch": e, "loss": loss - e, "val_loss": loss + 2 - e} for e in range(epochs)]
        train = {"objective": objective, "k": k, "init_from": init_from, "validation": validation,
                 "train_limit": train_limit}
        return {"train": train, "history": history}

    origin = run(5, objective="elbo", loss=100.0, validation=None)  # before the setting: the test digits
    version = {**run(1, k=50, init_from="cand", train_limit=40_000),
               "earlier_stages": [run(3, k=10, init_from="v3"), run(2, k=5, init_from="v1")]}
    folders = {"v1": (origin, "hash-of-v1")}  # what each folder holds now: a record and its weights

    def find_training(folder, weights):  # as export.origin_record does with real folders
        record, held = folders.get(folder, (None, None))
        return record if weights in (None, held) else None

    stages = figures.lineage(version, find_training)
    assert [(label, len(rows)) for label, rows in stages] == [
        ("ELBO, val. test", 5), ("IWAE k=5, val. held-out", 2), ("IWAE k=10, val. held-out", 3),
        ("IWAE k=50, val. held-out of first 40,000", 1)]
    assert stages[0][1] is origin["history"]
    version["earlier_stages"][-1]["init_from_checkpoint_hash"] = "hash-of-v1"  # the weights the oldest run started from
    assert len(figures.lineage(version, find_training)) == 4
    folders["v1"] = (origin, "hash-of-other-weights")  # v1's folder re-exported since: its record is not the origin's
    assert len(figures.lineage(version, find_training)) == 3
    assert [label for label, _ in figures.lineage(version)] == [
        "IWAE k=5, val. held-out", "IWAE k=10, val. held-out", "IWAE k=50, val. held-out of first 40,000"]
    looping = run(2, k=5, init_from="self")  # a version fine-tuned from its own folder, exported over it
    assert [len(rows) for _, rows in figures.lineage(looping, lambda folder, _: {"self": looping}[folder])] == [2]
    cycle = {"a": run(2, k=5, init_from="b"), "b": run(3, k=5, init_from="a")}  # each fine-tuned from the other
    assert [len(rows) for _, rows in figures.lineage(cycle["a"], lambda folder, _: cycle[folder])] == [2, 3, 2]
    assert figures.lineage({"history": []}) == []  # nothing to plot: write_all draws no curve
    figures.training_curve(stages, tmp_path / "curve.png")
    assert Image.open(tmp_path / "curve.png").format == "PNG"
