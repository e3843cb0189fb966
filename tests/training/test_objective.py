"""The training objectives and the stateless input draws of training.train."""

import numpy as np
import pytest
import tensorflow as tf

from training.model import VAE, ModelConfig
from training.signatures import log_weights, posterior_latents
from training.train import Objective, TrainConfig, epoch_permutation, example_draws, split_data


@pytest.fixture(scope="module")
def setup(test_digits):
    tf.keras.utils.set_random_seed(1)
    vae = VAE(ModelConfig(encoded_size=4, base_depth=8))
    x = tf.constant(test_digits[0][:6])
    eps = tf.random.stateless_normal([6, 5, 4], seed=[1, 2])
    return vae, x, eps


def _grads(vae, x, eps, **cfg):
    objective = Objective(vae, TrainConfig(**cfg), 1.0)
    loss, grads = objective(x, eps, 6)
    n_enc = len(objective.encoder_vars)
    return float(loss), grads[:n_enc], grads[n_enc:]


def test_iwae_loss_is_the_bound_and_dreg_keeps_it(setup):
    vae, x, eps = setup
    objective = Objective(vae, TrainConfig(objective="iwae", k=5), 1.0)
    mean, tril = objective.posterior(x)
    z = posterior_latents(mean, tril, eps)
    lw = log_weights(z, eps, tril, objective.log_px_z(z, x))
    bound = -np.mean(tf.reduce_logsumexp(lw, 1).numpy() - np.log(5))
    standard, _, dec_standard = _grads(vae, x, eps, objective="iwae", k=5)
    dreg, enc_dreg, dec_dreg = _grads(vae, x, eps, objective="iwae", k=5, gradient="dreg")
    assert standard == pytest.approx(bound, rel=1e-5) and dreg == pytest.approx(bound, rel=1e-5)
    # The decoder's gradient is the same estimator either way.
    for a, b in zip(dec_standard, dec_dreg, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)
    # The encoder's: the gradient of sum_k stop(w_k^2) log w_k with log q at stopped parameters.
    with tf.GradientTape() as tape:
        mean, tril = objective.posterior(x)
        z = posterior_latents(mean, tril, eps)
        mean_s, tril_s = tf.stop_gradient(mean), tf.stop_gradient(tril)
        eps_s = tf.linalg.matrix_transpose(tf.linalg.triangular_solve(
            tril_s, tf.linalg.matrix_transpose(z - mean_s[:, None, :]), lower=True))
        lw = log_weights(z, eps_s, tril_s, objective.log_px_z(z, x))
        w = tf.stop_gradient(tf.nn.softmax(lw, 1))
        surrogate = -tf.reduce_sum(w**2 * lw) / 6
    expected = tape.gradient(surrogate, objective.encoder_vars)
    for a, b in zip(expected, enc_dreg, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)


def test_elbo_objective_is_kl_plus_mean_distortion(setup):
    vae, x, eps = setup
    loss, _, _ = _grads(vae, x, eps[:, :1], objective="elbo", k=1)
    objective = Objective(vae, TrainConfig(), 1.0)
    mean, tril = objective.posterior(x)
    from training.signatures import analytic_kl

    z = posterior_latents(mean, tril, eps[:, :1])
    expected = np.mean(-objective.log_px_z(z, x).numpy()[:, 0] + analytic_kl(mean, tril).numpy())
    assert loss == pytest.approx(expected, rel=1e-5)


def test_draws_are_keyed_by_example_and_epoch_not_by_batch():
    u1, e1 = example_draws(tf.constant([5, 1, 3], tf.int64), 2, 42, 3, 4)
    u2, e2 = example_draws(tf.constant([3, 5], tf.int64), 2, 42, 3, 4)
    np.testing.assert_array_equal(u1.numpy()[[2, 0]], u2.numpy())
    np.testing.assert_array_equal(e1.numpy()[[2, 0]], e2.numpy())
    u3, _ = example_draws(tf.constant([3, 5], tf.int64), 3, 42, 3, 4)
    u4, _ = example_draws(tf.constant([3, 5], tf.int64), 2, 43, 3, 4)
    assert not np.array_equal(u2.numpy(), u3.numpy()) and not np.array_equal(u2.numpy(), u4.numpy())
    assert not np.array_equal(u2.numpy()[0], u2.numpy()[1])


def test_epoch_permutation_is_a_stateless_permutation():
    a = epoch_permutation(100, 42, 0)
    assert sorted(a) == list(range(100))
    np.testing.assert_array_equal(a, epoch_permutation(100, 42, 0))
    assert not np.array_equal(a, epoch_permutation(100, 42, 1))


def test_held_out_validation_is_the_last_sixth_of_training():
    images, test = np.arange(60), np.arange(100, 110)
    train, val = split_data(images, test, TrainConfig(validation="held-out"))
    assert list(val) == list(range(50, 60)) and list(train) == list(range(50))
    assert split_data(images, test, TrainConfig())[1] is test
