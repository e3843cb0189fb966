"""The exported signatures and the maths they embed, in one module that `evaluate` and `export` both import.

`VAEServingModule` is the tf.Module a version's SavedModel holds: encode / decode / sample / reconstruct / score as
tf.function signatures over the two Keras body models. `score_batch` (analytic KL, k-sample distortion, -IWAE_k) is
the body of the score signature and also what `training.evaluate` runs on a training run's Keras models, so a figure
measured either way is the same computation.

A Keras model ending in a TFP layer cannot be saved (tensorflow/probability#1604), so the module tracks only the body
models (plain Keras layers) and rebuilds the distributions inside its signatures, which return plain tensors."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

import contract
from training.model import IMAGE_SHAPE, make_prior

tfpl = tfp.layers

LOG_2PI = math.log(2 * math.pi)
NOISE_STREAM = 14  # the second word of every posterior-noise seed pair (seed, NOISE_STREAM)
SCORE_CHUNK = 256  # decodes per step of the scoring loop: bounds memory whatever the batch and k
IMAGES_SPEC = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images")


def log_det_scale(scale_tril):
    """log |det L| of lower-triangular L: the sum of log |diagonal|."""
    return tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(scale_tril))), axis=-1)


def analytic_kl(mean, scale_tril):
    """KL(N(mean, L L^T) || N(0, I)) per row: 0.5 (tr(Sigma) + |mean|^2 - d - log det Sigma)."""
    d = tf.cast(tf.shape(mean)[-1], tf.float32)
    trace = tf.reduce_sum(tf.square(scale_tril), axis=[-2, -1])
    return 0.5 * (trace + tf.reduce_sum(tf.square(mean), -1) - d - 2.0 * log_det_scale(scale_tril))


def posterior_noise(seeds, k, d):
    """eps (B, k, d) ~ N(0, I) with row i drawn from seeds[i] alone (stateless): the noise of an image depends on its
    own seed, never on its row in a batch or on how the k samples are chunked."""
    seeds = tf.convert_to_tensor(seeds, tf.int64)
    return tf.map_fn(lambda s: tf.random.stateless_normal(tf.stack([k, d]), seed=tf.stack([s, NOISE_STREAM])),
                     seeds, fn_output_signature=tf.float32)


def posterior_latents(mean, scale_tril, eps):
    """z = mean + L eps: (B, d), (B, d, d), (B, k, d) -> (B, k, d)."""
    return mean[:, None, :] + tf.einsum("bij,bkj->bki", scale_tril, eps)


def log_weights(z, eps, scale_tril, log_px_z):
    """The importance log-weights log p(x|z) + log p(z) - log q(z|x), (B, k), of z = mean + L eps under the N(0, I)
    prior, given log p(x|z) (B, k). Shared by the score signature and the importance-weighted training objective."""
    d = tf.cast(tf.shape(z)[-1], tf.float32)
    log_pz = -0.5 * tf.reduce_sum(tf.square(z), -1) - 0.5 * d * LOG_2PI
    log_qz = -0.5 * tf.reduce_sum(tf.square(eps), -1) - log_det_scale(scale_tril)[:, None] - 0.5 * d * LOG_2PI
    return log_px_z + log_pz - log_qz


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
    z = posterior_latents(mean, scale_tril, eps)
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
    kl = analytic_kl(mean, scale_tril)
    distortion = -tf.reduce_mean(log_px_z, 1)
    log_w = log_weights(z, eps, scale_tril, log_px_z)
    nll = -(tf.reduce_logsumexp(log_w, 1) - tf.math.log(tf.cast(k, tf.float32)))
    return {"elbo": distortion + kl, "kl": kl, "distortion": distortion, "nll": nll}


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
        """Per image -ELBO, KL, distortion and -IWAE_k in nats (score_batch, pixels as given)."""

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


def signature_schema(module):
    """The metadata's `signatures` block: each signature's input and output dtypes and shapes."""

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
