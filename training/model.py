"""The TFP Layers VAE: an isotropic Gaussian prior, a conv encoder ending in a full-covariance Gaussian
posterior, and a transposed-conv decoder ending in independent Bernoulli pixels."""

import dataclasses

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

tfd = tfp.distributions
tfpl = tfp.layers

IMAGE_SHAPE = (28, 28, 1)


@dataclasses.dataclass
class ModelConfig:
    encoded_size: int = 16
    base_depth: int = 32
    beta: float = 1.0
    # Mixed precision runs the convolutions in bfloat16 on CPUs with AVX512-BF16 or AMX (and on GPUs);
    # the posterior/likelihood parameters and all distribution maths stay in float32.
    bfloat16: bool = False


def make_prior(encoded_size):
    """N(0, I) over the latents. MultivariateNormalDiag (not Independent(Normal)) so that the KL against
    the MultivariateNormalTriL posterior has a closed form."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros(encoded_size), scale_diag=tf.ones(encoded_size))


def _conv_dtype(config):
    return "mixed_bfloat16" if config.bfloat16 else "float32"


def make_encoder_body(config):
    """Images (B, 28, 28, 1) in [0, 1] -> posterior parameters (B, params_size), float32."""
    base, d = config.base_depth, config.encoded_size
    act = tf.nn.leaky_relu
    dtype = _conv_dtype(config)
    return tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=IMAGE_SHAPE),
            tf_keras.layers.Lambda(lambda x: tf.cast(x, tf.float32) - 0.5),
            tf_keras.layers.Conv2D(base, 5, strides=1, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2D(base, 5, strides=2, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2D(2 * base, 5, strides=1, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2D(2 * base, 5, strides=2, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2D(4 * d, 7, strides=1, padding="valid", activation=act, dtype=dtype),
            tf_keras.layers.Flatten(dtype=dtype),
            tf_keras.layers.Dense(tfpl.MultivariateNormalTriL.params_size(d), dtype="float32"),
        ],
        name="encoder_body",
    )


def make_decoder_body(config):
    """Latents (B, d) -> Bernoulli logits (B, 784), float32."""
    base, d = config.base_depth, config.encoded_size
    act = tf.nn.leaky_relu
    dtype = _conv_dtype(config)
    return tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=[d]),
            tf_keras.layers.Reshape([1, 1, d], dtype=dtype),
            tf_keras.layers.Conv2DTranspose(2 * base, 7, strides=1, padding="valid", activation=act, dtype=dtype),
            tf_keras.layers.Conv2DTranspose(2 * base, 5, strides=1, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2DTranspose(2 * base, 5, strides=2, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2DTranspose(base, 5, strides=1, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2DTranspose(base, 5, strides=2, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2DTranspose(base, 5, strides=1, padding="same", activation=act, dtype=dtype),
            tf_keras.layers.Conv2D(1, 5, strides=1, padding="same", activation=None, dtype="float32"),
            tf_keras.layers.Flatten(dtype="float32"),
        ],
        name="decoder_body",
    )


class KLDivergenceOnceRegularizer(tfpl.KLDivergenceRegularizer):
    """tfpl.KLDivergenceRegularizer that adds the KL once per call.

    Keras applies an activity regularizer to every flattened output of a layer, and a TFP distribution
    layer's __call__ outputs the pair (distribution, sampled tensor that carries the distribution), so
    the stock regularizer adds the KL twice (TFP 0.25 with tf_keras 2.21): beta = 1 would train as 2.
    Here the plain-tensor half of the pair contributes zero."""

    def __call__(self, distribution_a):
        if not isinstance(distribution_a, tfd.Distribution):
            return tf.zeros([])
        return super().__call__(distribution_a)


class VAE:
    """The Keras models of the design. `encoder` ends in MultivariateNormalTriL with the KL regularizer;
    `decoder` ends in IndependentBernoulli; `vae` chains them. The *_body models hold all the weights and
    are what the exported SavedModel tracks (a Keras model ending in a TFP layer cannot be saved)."""

    def __init__(self, config: ModelConfig):
        self.config = config
        d = config.encoded_size
        self.prior = make_prior(d)
        self.encoder_body = make_encoder_body(config)
        self.decoder_body = make_decoder_body(config)
        self.encoder = tf_keras.Sequential(
            [
                tf_keras.layers.InputLayer(input_shape=IMAGE_SHAPE),
                self.encoder_body,
                tfpl.MultivariateNormalTriL(
                    d,
                    activity_regularizer=KLDivergenceOnceRegularizer(
                        self.prior, weight=config.beta, use_exact_kl=True
                    ),
                ),
            ],
            name="encoder",
        )
        self.decoder = tf_keras.Sequential(
            [
                tf_keras.layers.InputLayer(input_shape=[d]),
                self.decoder_body,
                tfpl.IndependentBernoulli(IMAGE_SHAPE, tfd.Bernoulli.logits),
            ],
            name="decoder",
        )
        self.vae = tf_keras.Model(
            inputs=self.encoder.inputs, outputs=self.decoder(self.encoder.outputs[0]), name="vae"
        )


def negative_log_likelihood(x, rv_x):
    """The distortion term: -log p(x | z) in nats per image."""
    return -rv_x.log_prob(x)
