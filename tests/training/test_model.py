import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from training.model import VAE, ModelConfig, make_prior

tfd = tfp.distributions


@pytest.mark.parametrize("d,base", [(16, 32), (4, 8)])
def test_build_gives_design_shapes_and_distributions(d, base):
    vae = VAE(ModelConfig(encoded_size=d, base_depth=base))
    x = tf.zeros([3, 28, 28, 1])
    q = vae.encoder(x).tensor_distribution  # TFP layers wrap the distribution to make it tensor-coercible
    assert isinstance(q, tfd.MultivariateNormalTriL)
    assert q.batch_shape == [3] and q.event_shape == [d]
    assert vae.encoder_body(x).shape == (3, d + d * (d + 1) // 2)
    p = vae.decoder(tf.zeros([3, d])).tensor_distribution
    assert isinstance(p, tfd.Independent) and isinstance(p.distribution, tfd.Bernoulli)
    assert p.batch_shape == [3] and p.event_shape == [28, 28, 1]
    assert vae.vae(x).event_shape == [28, 28, 1]
    # The encoder's conv stack follows the design: base, base (stride 2), 2 base, 2 base (stride 2), 4 d 7x7.
    convs = [layer for layer in vae.encoder_body.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [base, base, 2 * base, 2 * base, 4 * d]
    assert [c.strides[0] for c in convs] == [1, 2, 1, 2, 1]


def test_encoder_adds_exact_kl_against_isotropic_prior():
    vae = VAE(ModelConfig(encoded_size=4, base_depth=8, beta=2.0))
    x = tf.random.uniform([5, 28, 28, 1], seed=1)
    q = vae.encoder(x)
    expected = 2.0 * tf.reduce_mean(tfd.kl_divergence(q, tfd.MultivariateNormalDiag(tf.zeros(4), tf.ones(4))))
    # Counted once: the stock regularizer would add it twice (see KLDivergenceOnceRegularizer).
    np.testing.assert_allclose(tf.add_n(vae.encoder.losses).numpy(), expected.numpy(), rtol=1e-5)


def test_compiled_loss_is_negative_elbo_with_kl_counted_once():
    vae = VAE(ModelConfig(encoded_size=4, base_depth=8))
    x = tf.cast(tf.random.uniform([6, 28, 28, 1], seed=2) > 0.5, tf.float32)
    # With the distortion term zeroed, what Keras optimizes is exactly the mean KL.
    vae.vae.compile(loss=lambda x, rv_x: 0.0 * tf.reduce_sum(rv_x.mean(), axis=[1, 2, 3]))
    kl = tf.reduce_mean(tfd.kl_divergence(vae.encoder(x), make_prior(4)))
    np.testing.assert_allclose(vae.vae.evaluate(x, x, batch_size=6, verbose=0), kl.numpy(), rtol=1e-5)


def test_bfloat16_build_keeps_distribution_parameters_float32():
    vae = VAE(ModelConfig(encoded_size=4, base_depth=8, bfloat16=True))
    assert vae.encoder_body(tf.zeros([2, 28, 28, 1])).dtype == tf.float32
    assert vae.decoder_body(tf.zeros([2, 4])).dtype == tf.float32
    assert vae.decoder_body.layers[1].compute_dtype == "bfloat16"
