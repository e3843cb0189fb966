"""Training throughput (images/s) on this machine, in three parts:

- default: the original TFP Layers post's code path (Keras fit) against this package's `train` loop on the same
  MNIST images, per objective (ELBO at batch 256 and 64, IWAE k=5, IWAE k=5 with DReG gradients);
- --workers: `python -m training train` with one process and with two worker processes (MultiWorkerMirroredStrategy
  over 127.0.0.1), one epoch each over --images, plus the communication cost per step: an all-reduce of the model's
  gradients between two workers, alone.

Prints JSON (and writes it to --out).

    python bench/train_speed.py --data-dir ../shared/data/mnist
    python bench/train_speed.py --data-dir ../shared/data/mnist --workers --images 12800
"""

import argparse
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
import tf_keras as tfk  # noqa: E402
from report import emit  # noqa: E402

from training import data  # noqa: E402
from training.model import ModelConfig  # noqa: E402
from training.train import TrainConfig, read_history, train  # noqa: E402

tfd, tfpl, tfkl = tfp.distributions, tfp.layers, tfk.layers
REPO = pathlib.Path(__file__).resolve().parents[1]


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


def original_images_per_second(images, repeats):
    """The post's Keras fit: one timed pass over the images after a warm-up pass that traces the step function."""
    model, dataset = original_vae(), original_dataset(images)
    model.fit(dataset.take(3), epochs=1, verbose=0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        rates.append(len(images) / (time.perf_counter() - start))
    return rates


def ours(data_dir, n_images, batch_size, **cfg):
    """Images per second of one epoch of `train` (the custom loop, one device) over the first n_images, from the
    run's history (steps only, the first step's tracing included; the validation pass is not timed)."""
    with tempfile.TemporaryDirectory() as run:
        train(run, ModelConfig(), TrainConfig(epochs=1, batch_size=batch_size, train_limit=n_images, validation_k=1,
                                              backup_every=0, **cfg),
              data_dir=data_dir, verbose=0, strategy="one-device")
        return read_history(run)[0]["images_per_second"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tf_config=None):
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")}
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = str(REPO)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _cluster(n):
    return {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(n)]}


def multiworker_epoch(data_dir, n_images, workers, batch_size):
    """One epoch of `python -m training train` over n_images with `workers` processes on this machine (1: the
    one-device strategy): the chief's seconds and images/s for the epoch's steps (global batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "training", "train", "--run-dir", f"{tmp}/run", "--data-dir", str(data_dir),
                "--train-limit", str(n_images), "--epochs", "1", "--batch-size", str(batch_size),
                "--validation-k", "1", "--backup-every", "0"]
        if workers == 1:
            envs, strategy = [_env()], "one-device"
        else:
            spec = _cluster(workers)
            envs = [_env({"cluster": spec, "task": {"type": "worker", "index": i}}) for i in range(workers)]
            strategy = "multi-worker"
        procs = [subprocess.Popen([*args, "--strategy", strategy], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for env in envs]
        for p in procs:
            _, err = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(f"worker exited {p.returncode}: {err[-1000:]}")
        row = read_history(f"{tmp}/run")[0]
        return {"seconds_per_epoch": row["seconds"], "images_per_second": row["images_per_second"],
                "loss": round(row["loss"], 2)}


ALLREDUCE = r"""
import json, os, sys, time
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING))
from training.model import VAE, ModelConfig
with strategy.scope():
    vae = VAE(ModelConfig())
variables = vae.encoder_body.trainable_variables + vae.decoder_body.trainable_variables

@tf.function
def step():
    def fn():
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                              [tf.ones_like(v) for v in variables])
    return strategy.run(fn)

step()
n = int(sys.argv[1])
start = time.perf_counter()
for _ in range(n):
    step()
print(json.dumps({"ms_per_allreduce": round(1000 * (time.perf_counter() - start) / n, 2),
                  "parameters": int(sum(v.shape.num_elements() for v in variables))}))
"""


def allreduce_cost(steps=50):
    """Milliseconds per all-reduce of the model's gradients (every trainable variable, float32) between two worker
    processes on this machine: the communication one multi-worker step adds."""
    spec = _cluster(2)
    procs = [subprocess.Popen([sys.executable, "-c", ALLREDUCE, str(steps)], cwd=REPO,
                              env=_env({"cluster": spec, "task": {"type": "worker", "index": i}}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode:
            raise RuntimeError(err[-1000:])
    return json.loads(outs[0][0].strip().splitlines()[-1])


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
    p.add_argument("--repeats", type=int, default=2, help="timed passes of the post's code (best is reported)")
    p.add_argument("--workers", action="store_true", help="one worker against two, and the all-reduce cost")
    p.add_argument("--batch-size", type=int, default=64, help="the global batch of --workers (default: 64)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    flags = cpu_flags()
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "avx512_bf16": "avx512_bf16" in flags,
               "gpus": len(tf.config.list_physical_devices("GPU")), "load_average_at_start": os.getloadavg()}
    if args.workers:
        results = {}
        for workers in (1, 2):
            results[f"{workers}_worker{'s' if workers > 1 else ''}"] = multiworker_epoch(
                args.data_dir, args.images, workers, args.batch_size)
            print(results, file=sys.stderr, flush=True)
        results["allreduce_2_workers"] = allreduce_cost()
        emit({"benchmark": "train --strategy multi-worker, one epoch, ELBO, on this machine", "images": args.images,
              "global_batch": args.batch_size, "machine": machine, "tensorflow": tf.__version__,
              "results": results}, args.out)
        return

    tfk.utils.set_random_seed(0)
    images, _ = data.load_mnist("train", args.data_dir, limit=args.images)
    variants = {
        "original_post_code_batch256": lambda: max(original_images_per_second(images, args.repeats)),
        "ours_elbo_batch256": lambda: ours(args.data_dir, args.images, 256),
        "ours_elbo_batch64_default": lambda: ours(args.data_dir, args.images, 64),
        "ours_iwae_k5_batch64": lambda: ours(args.data_dir, args.images, 64, objective="iwae", k=5),
        "ours_iwae_k5_dreg_batch64": lambda: ours(args.data_dir, args.images, 64, objective="iwae", k=5,
                                                  gradient="dreg"),
    }
    results = {}
    for name, run in variants.items():
        try:
            results[name] = {"images_per_second": round(run(), 1)}
        except Exception as e:  # a variant the platform cannot run is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    base = results["original_post_code_batch256"].get("images_per_second")
    for r in results.values():
        if base and "images_per_second" in r:
            r["ratio_vs_original"] = round(r["images_per_second"] / base, 2)
    emit({"benchmark": "training images per second, one pass over the same MNIST images per variant",
          "images_per_pass": len(images), "repeats": args.repeats, "machine": machine, "tensorflow": tf.__version__,
          "results": results}, args.out)


if __name__ == "__main__":
    main()
