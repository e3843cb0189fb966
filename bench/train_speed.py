"""Training throughput (images/s) of this package against the original TFP Layers post's code path, on the
same MNIST images, in the same process. Prints JSON (and writes it to --out).

    python bench/train_speed.py --data-dir ../shared/data/mnist
"""

import argparse
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
import tf_keras as tfk  # noqa: E402
from report import emit  # noqa: E402

from training import data  # noqa: E402
from training.model import ModelConfig  # noqa: E402
from training.train import TrainConfig, build  # noqa: E402

tfd, tfpl, tfkl = tfp.distributions, tfp.layers, tfk.layers


def original_vae(encoded_size=16, base_depth=32):
    """The post's model and compile call, verbatim apart from tfk = tf_keras."""
    prior = tfd.Independent(tfd.Normal(loc=tf.zeros(encoded_size), scale=1), reinterpreted_batch_ndims=1)
    encoder = tfk.Sequential([
        tfkl.InputLayer(input_shape=(28, 28, 1)),
        tfkl.Lambda(lambda x: tf.cast(x, tf.float32) - 0.5),
        tfkl.Conv2D(base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(2 * base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(2 * base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(4 * encoded_size, 7, strides=1, padding="valid", activation=tf.nn.leaky_relu),
        tfkl.Flatten(),
        tfkl.Dense(tfpl.MultivariateNormalTriL.params_size(encoded_size), activation=None),
        tfpl.MultivariateNormalTriL(encoded_size, activity_regularizer=tfpl.KLDivergenceRegularizer(prior)),
    ])
    decoder = tfk.Sequential([
        tfkl.InputLayer(input_shape=[encoded_size]),
        tfkl.Reshape([1, 1, encoded_size]),
        tfkl.Conv2DTranspose(2 * base_depth, 7, strides=1, padding="valid", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(2 * base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(2 * base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(base_depth, 5, strides=2, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding="same", activation=tf.nn.leaky_relu),
        tfkl.Conv2D(filters=1, kernel_size=5, strides=1, padding="same", activation=None),
        tfkl.Flatten(),
        tfpl.IndependentBernoulli((28, 28, 1), tfd.Bernoulli.logits),
    ])
    vae = tfk.Model(inputs=encoder.inputs, outputs=decoder(encoder.outputs[0]))
    vae.compile(optimizer=tf.optimizers.Adam(learning_rate=1e-3), loss=lambda x, rv_x: -rv_x.log_prob(x))
    return vae


def original_dataset(images):
    """The post's tfds pipeline on the same uint8 images: a per-image map, batch 256, then a shuffle of
    batches. (The binarization is the corrected x ~ Bernoulli(pixel / 255), not the post's inverted one.)"""

    def _preprocess(sample):
        image = tf.cast(sample["image"], tf.float32) / 255.0
        image = tf.cast(tf.random.uniform(tf.shape(image)) < image, tf.float32)
        return image, image

    ds = tf.data.Dataset.from_tensor_slices({"image": images})
    return ds.map(_preprocess).batch(256).prefetch(tf.data.experimental.AUTOTUNE).shuffle(int(10e3))


def ours(images, batch_size, bfloat16=False, jit_compile=False):
    vae, _, _ = build(ModelConfig(bfloat16=bfloat16), TrainConfig(batch_size=batch_size), 100)
    if jit_compile:
        vae.vae.compile(optimizer=vae.vae.optimizer, loss=vae.vae.loss, jit_compile=True)
    return vae.vae, data.training_dataset(images, batch_size, seed=0)


def images_per_second(model, dataset, n_images):
    """Time one pass over n_images after a warm-up pass that traces the step function."""
    model.fit(dataset.take(3), epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return n_images / (time.perf_counter() - start)


def cpu_flags():
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder with the MNIST IDX .gz files (default: download)")
    p.add_argument("--images", type=int, default=15_360, help="training images per timed pass")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per variant (best is reported)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    tfk.utils.set_random_seed(0)
    images, _ = data.load_mnist("train", args.data_dir, limit=args.images)
    flags = cpu_flags()
    bf16_hw = bool({"avx512_bf16", "amx_bf16"} & flags) or bool(tf.config.list_physical_devices("GPU"))
    variants = {
        "original_post_code_batch256": lambda: (original_vae(), original_dataset(images)),
        "ours_float32_batch256": lambda: ours(images, 256),
        "ours_float32_batch256_xla": lambda: ours(images, 256, jit_compile=True),
        "ours_float32_batch64_default": lambda: ours(images, 64),
    }
    if bf16_hw:
        variants["ours_bfloat16_batch256"] = lambda: ours(images, 256, bfloat16=True)
    results = {}
    for name, make in variants.items():
        try:
            model, dataset = make()
            rates = [images_per_second(model, dataset, len(images)) for _ in range(args.repeats)]
            results[name] = {"images_per_second": round(max(rates), 1), "all_passes": [round(r, 1) for r in rates]}
        except Exception as e:  # a variant the platform cannot run is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    base = results["original_post_code_batch256"]["images_per_second"]
    for r in results.values():
        if "images_per_second" in r:
            r["ratio_vs_original"] = round(r["images_per_second"] / base, 2)
    report = {
        "benchmark": "training images per second, one pass over the same MNIST images per variant",
        "images_per_pass": len(images),
        "repeats": args.repeats,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "avx512_bf16": "avx512_bf16" in flags,
                    "gpus": len(tf.config.list_physical_devices("GPU"))},
        "tensorflow": tf.__version__,
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
