"""Training: a custom loop under a tf.distribute strategy (one device, several GPUs of one machine, or several
workers named by TF_CONFIG), with the ELBO or the importance-weighted (IWAE) objective.

Input: the in-memory uint8 arrays, sharded explicitly: step s of epoch e takes positions [s G, (s + 1) G) of the
epoch's permutation (G the global batch), and global replica r of R takes the r-th slice of G / R of them. The
permutation, the dynamic binarization and the posterior noise are stateless draws keyed by the run's seed, the epoch
and the example's index in the training array, so the same global batch sees the same examples and the same noise
with one worker or two, every worker draws different noise, and a resumed run draws what the uninterrupted one would.

Checkpoints: `checkpoints/ckpt-N` after epoch N (what `export` and `evaluate --run-dir` read) and a backup every
`backup_every` steps inside an epoch (`backup/`), from which a restarted run resumes at the step it reached, the way
tf.keras' BackupAndRestore does for fit. Only the chief writes the run's files; other workers write their checkpoint
copies to temporary folders and delete them, as tf.distribute requires."""

import csv
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from training import data
from training.errors import RunError
from training.model import VAE, ModelConfig
from training.signatures import analytic_kl, log_weights, posterior_latents

log = logging.getLogger(__name__)

OBJECTIVES = ("elbo", "iwae")
GRADIENTS = ("standard", "dreg")
LR_SCHEDULES = ("cosine", "constant")
VALIDATIONS = ("test", "held-out")
STRATEGIES = ("auto", "one-device", "mirrored", "multi-worker")
BINARIZATION_STREAM, NOISE_STREAM = 1, 2  # second words of the stateless seeds of the two per-example draws


@dataclasses.dataclass
class TrainConfig:
    """One run's recipe, saved in config.json; `--resume` reads it back."""

    epochs: int = 50
    batch_size: int = 64  # the global batch, whatever the number of replicas
    learning_rate: float = 1e-3
    # cosine: decay to final_lr_fraction x learning_rate over the planned run; the late low-rate epochs are what take
    # the ELBO well below the constant-rate figure.
    lr_schedule: str = "cosine"
    seed: int = 42
    train_limit: int | None = None
    final_lr_fraction: float = 0.05
    objective: str = "elbo"  # elbo: -ELBO (analytic KL, k-sample distortion); iwae: -IWAE_k
    k: int = 1  # posterior samples per example
    gradient: str = "standard"  # dreg: doubly reparameterized encoder gradients for iwae (Tucker et al. 2019)
    validation: str = "test"  # test: the test digits; held-out: the last sixth of the training digits (not trained on)
    validation_k: int = 10  # importance samples of the per-epoch validation IWAE bound
    init_from: str | None = None  # an exported version folder whose weights start the run
    backup_every: int = 100  # steps between mid-epoch backups


# ---------------------------------------------------------------------------------------------------- strategies


@dataclasses.dataclass
class Cluster:
    """Where this process stands: its strategy, whether it is the chief (the one that writes) and its task id."""

    strategy: tf.distribute.Strategy
    kind: str
    is_chief: bool = True
    task: str = "chief:0"
    workers: int = 1


def parse_tf_config(text):
    """TF_CONFIG's cluster and task, checked; RunError with one line on anything that cannot be a cluster."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(f"TF_CONFIG is not valid JSON ({e})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) and ":" in a for a in v) for v in cluster.values()):
        raise RunError("TF_CONFIG names no cluster: expected {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                       "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise RunError(f"TF_CONFIG's task {task!r} is not one of its cluster's tasks {sorted(cluster)}")
    return cluster, task


_WATCHDOG = r"""
import os, select, signal, sys, time
pid, timeout, what = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + timeout
while True:
    ready, _, _ = select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
    if ready:
        line = sys.stdin.readline()
        if not line or line.startswith("stop"):
            sys.exit(0)
        deadline = time.monotonic() + timeout
        what = line[5:].strip() or what
    elif time.monotonic() >= deadline:
        print(f"error: {what}: nothing for {timeout:.0f} s, giving up", file=sys.stderr, flush=True)
        os.kill(pid, signal.SIGKILL)
        sys.exit(0)
"""


class Watchdog:
    """Kills this process (SIGKILL, exit status 137) after one line on stderr when `kick` has not been called for
    `timeout` seconds: a peer that never comes up or stops answering must not hang the run.

    A separate process, because a thread cannot: TensorFlow's multi-worker start-up and collectives block in C++
    holding the GIL, and its preemption notifier catches SIGTERM. The watchdog ends when this process ends."""

    def __init__(self, timeout, what):
        import subprocess

        self.timeout = timeout
        self._proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), what],
                                      stdin=subprocess.PIPE, text=True)

    def _send(self, line):
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def kick(self, what=""):
        self._send(f"kick {what}")

    def stop(self):
        self._send("stop")
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._proc.wait()


def make_cluster(kind="auto", cluster_timeout=120.0):
    """The strategy for `kind` (see STRATEGIES). Must run before any other TensorFlow op of the process.

    multi-worker waits for its peers at most cluster_timeout seconds (then exits 3 with one line)."""
    if kind not in STRATEGIES:
        raise RunError(f"unknown strategy {kind!r}: one of {', '.join(STRATEGIES)}")
    tf_config = os.environ.get("TF_CONFIG", "").strip()
    if kind == "auto":
        if tf_config:
            kind = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "one-device"
    if kind == "one-device":
        gpus = tf.config.list_physical_devices("GPU")
        return Cluster(tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0"), kind)
    if kind == "mirrored":
        return Cluster(tf.distribute.MirroredStrategy(), kind)
    if not tf_config:
        raise RunError("--strategy multi-worker needs TF_CONFIG (the cluster and this task), which is not set")
    cluster, task = parse_tf_config(tf_config)
    watchdog = Watchdog(cluster_timeout, f"multi-worker start-up: the peers of {task['type']}:{task['index']} "
                                         f"({', '.join(a for v in cluster.values() for a in v)}) did not all come up")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        # The first collective proves every peer is there.
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
    except tf.errors.OpError as e:
        raise RunError(f"multi-worker start-up failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        watchdog.stop()
    resolver = strategy.cluster_resolver
    is_chief = resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                                 and "chief" not in cluster)
    return Cluster(strategy, kind, is_chief, f"{resolver.task_type}:{resolver.task_id}",
                   sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")))


# ---------------------------------------------------------------------------------------------------- input


def epoch_permutation(n, seed, epoch):
    """The order of the n training examples in `epoch`: a stateless draw of (seed, epoch)."""
    keys = tf.random.stateless_uniform([n], seed=tf.constant([seed, epoch], tf.int64), dtype=tf.float32)
    return tf.argsort(keys, stable=True).numpy()


def steps_per_epoch(n, batch_size):
    """Whole global batches only (every replica gets the same number of steps); at least one."""
    if n < batch_size:
        raise RunError(f"the global batch ({batch_size}) is larger than the training set ({n} images)")
    return n // batch_size


def example_draws(indices, epoch, seed, k, d):
    """Per example, from its own stateless seeds (run seed, epoch, index): uniform noise (B, 28, 28, 1) for the
    binarization and posterior noise (B, k, d)."""
    epoch = tf.cast(epoch, tf.int64)
    binarization_key = tf.constant(seed * 4 + BINARIZATION_STREAM, tf.int64)
    noise_key = tf.constant(seed * 4 + NOISE_STREAM, tf.int64)

    def one(i):
        counter = epoch * (2 ** 32) + tf.cast(i, tf.int64)
        u = tf.random.stateless_uniform([28, 28, 1], seed=tf.stack([binarization_key, counter]))
        eps = tf.random.stateless_normal(tf.stack([k, d]), seed=tf.stack([noise_key, counter]))
        return u, eps

    return tf.map_fn(one, indices, fn_output_signature=(tf.float32, tf.float32), parallel_iterations=64)


# ---------------------------------------------------------------------------------------------------- objectives


class Objective:
    """The per-example loss of a batch and its gradients, for the ELBO or the IWAE bound."""

    def __init__(self, vae, cfg, beta):
        self.vae, self.cfg, self.beta = vae, cfg, beta
        self.d = vae.config.encoded_size
        self.encoder_vars = vae.encoder_body.trainable_variables
        self.decoder_vars = vae.decoder_body.trainable_variables

    def posterior(self, x):
        params = self.vae.encoder_body(x, training=True)
        q = tfp.layers.MultivariateNormalTriL.new(params, self.d)
        return q.mean(), q.scale.to_dense()

    def log_px_z(self, z, x):
        b, k = tf.shape(z)[0], tf.shape(z)[1]
        logits = tf.reshape(self.vae.decoder_body(tf.reshape(z, [b * k, self.d]), training=True), [b, k, -1])
        labels = tf.reshape(x, [b, 1, -1])
        return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(tf.broadcast_to(labels, tf.shape(logits)),
                                                                      logits), -1)

    def __call__(self, x, eps, global_batch):
        """(loss summed over the batch / global batch, gradients for encoder + decoder variables)."""
        variables = self.encoder_vars + self.decoder_vars
        scale = 1.0 / tf.cast(global_batch, tf.float32)
        if self.cfg.objective == "iwae" and self.cfg.gradient == "dreg":
            return self._dreg(x, eps, scale)
        with tf.GradientTape() as tape:
            mean, scale_tril = self.posterior(x)
            z = posterior_latents(mean, scale_tril, eps)
            log_px_z = self.log_px_z(z, x)
            if self.cfg.objective == "elbo":
                per_example = -tf.reduce_mean(log_px_z, 1) + self.beta * analytic_kl(mean, scale_tril)
            else:
                lw = log_weights(z, eps, scale_tril, log_px_z)
                per_example = -(tf.reduce_logsumexp(lw, 1) - tf.math.log(tf.cast(tf.shape(lw)[1], tf.float32)))
            loss = tf.reduce_sum(per_example) * scale
        return loss, tape.gradient(loss, variables)

    def _dreg(self, x, eps, scale):
        """IWAE with doubly reparameterized encoder gradients: the decoder gets the usual IWAE gradient
        sum_k w_k grad log w_k; the encoder sum_k w_k^2 d log w_k / dz_k dz_k / dphi with log q evaluated at stopped
        posterior parameters. One backward pass: each z_k reaches log w_k alone, so the gradient reaching z_k under
        the upstream weight w_k, times w_k again, is the encoder's upstream."""
        with tf.GradientTape(persistent=True) as tape:
            mean, scale_tril = self.posterior(x)
            z = posterior_latents(mean, scale_tril, eps)
            mean_s, tril_s = tf.stop_gradient(mean), tf.stop_gradient(scale_tril)
            # eps' = L_s^{-1} (z - mean_s): the noise that gives z under the stopped posterior (equals eps in value).
            eps_s = tf.linalg.matrix_transpose(
                tf.linalg.triangular_solve(tril_s, tf.linalg.matrix_transpose(z - mean_s[:, None, :]), lower=True))
            lw = log_weights(z, eps_s, tril_s, self.log_px_z(z, x))
            k = tf.cast(tf.shape(lw)[1], tf.float32)
            w = tf.stop_gradient(tf.nn.softmax(lw, axis=1))
            surrogate = -tf.reduce_sum(w * lw) * scale
            loss = tf.reduce_sum(-(tf.reduce_logsumexp(lw, 1) - tf.math.log(k))) * scale
        grads = tape.gradient(surrogate, self.decoder_vars + [z])
        decoder_grads, dz = grads[:-1], grads[-1]
        encoder_grads = tape.gradient(z, self.encoder_vars, output_gradients=dz * w[..., None])
        del tape
        return loss, list(encoder_grads) + list(decoder_grads)


# ---------------------------------------------------------------------------------------------------- run files


def read_history(run_dir):
    """The per-epoch rows of history.csv (epoch, loss, val_loss, ...), [] before the first epoch."""
    path = pathlib.Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def _write_history(run_dir, rows):
    path = pathlib.Path(run_dir) / "history.csv"
    fields = list(dict.fromkeys(key for row in rows for key in row))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def load_exported_weights(vae, model_dir):
    """Read an exported version's weights (its variables are a checkpoint whose root is the serving module, with
    children encoder_body and decoder_body) into vae's body models."""
    path = pathlib.Path(model_dir) / "variables" / "variables"
    if not path.with_suffix(".index").exists():
        raise RunError(f"--init-from {model_dir}: no exported SavedModel variables there")
    checkpoint = tf.train.Checkpoint(encoder_body=vae.encoder_body, decoder_body=vae.decoder_body)
    checkpoint.read(str(path)).assert_existing_objects_matched().expect_partial()
    return str(path)


def checkpoint_hash(model_dir) -> str | None:
    """The weights an exported version folder holds, as its SavedModel fingerprint names them (None without one)."""
    try:
        return str(tf.saved_model.experimental.read_fingerprint(str(model_dir)).checkpoint_hash)
    except (OSError, ValueError, tf.errors.OpError):
        return None


def exported_model_config(model_dir):
    """The ModelConfig an exported version was trained with (its metadata)."""
    import contract

    try:
        return ModelConfig(**contract.read_metadata(pathlib.Path(model_dir))["training"]["model"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise RunError(f"--init-from {model_dir}: no readable metadata with the model configuration ({e})") from None


def restore_weights(run_dir):
    """The VAE of the latest checkpoint in run_dir (weights only), with its config and the checkpoint path."""
    run_dir = pathlib.Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    vae = VAE(ModelConfig(**config["model"]))
    latest = tf.train.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise RunError(f"no checkpoint in {run_dir / 'checkpoints'}")
    ckpt = tf.train.Checkpoint(encoder_body=vae.encoder_body, decoder_body=vae.decoder_body)
    ckpt.restore(latest).expect_partial()
    return vae, config, latest


def _learning_rate(cfg, total_steps):
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    return tf_keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total_steps, alpha=cfg.final_lr_fraction)


def current_learning_rate(optimizer):
    rate = optimizer._learning_rate  # noqa: SLF001 (a float variable or a schedule; the public property varies)
    if isinstance(rate, tf_keras.optimizers.schedules.LearningRateSchedule):
        return float(rate(optimizer.iterations))
    return float(tf.convert_to_tensor(rate))


def _check(cfg, model_cfg):
    for name, value, allowed in (("objective", cfg.objective, OBJECTIVES), ("gradient", cfg.gradient, GRADIENTS),
                                 ("lr_schedule", cfg.lr_schedule, LR_SCHEDULES),
                                 ("validation", cfg.validation, VALIDATIONS)):
        if value not in allowed:
            raise RunError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    if cfg.objective == "iwae" and model_cfg.beta != 1.0:
        raise RunError("--objective iwae bounds log p(x) itself: --beta must be 1")
    if cfg.gradient == "dreg" and cfg.objective != "iwae":
        raise RunError("--gradient dreg is for --objective iwae")


def split_data(images, test_images, cfg):
    """(training images, validation images): held-out is the last sixth of the training images (10,000 of 60,000)."""
    if cfg.validation == "held-out":
        held = len(images) // 6
        if held == 0:
            raise RunError("too few training images to hold out a validation set")
        return images[:-held], images[-held:]
    return images, test_images


# ---------------------------------------------------------------------------------------------------- the loop


def train(run_dir, model_cfg, train_cfg, data_dir=None, resume=False, verbose=2, strategy="auto",
          cluster_timeout=120.0, step_timeout=600.0, stop_after_steps=None):
    """Train into run_dir (resuming its last checkpoint or backup with resume=True); returns the trained VAE.

    strategy: one of STRATEGIES. cluster_timeout: seconds to wait for multi-worker peers at start; step_timeout:
    seconds without a finished step (multi-worker) before giving up. stop_after_steps: stop (as if preempted) once
    this many steps ran in this process (for tests)."""
    cluster = make_cluster(strategy, cluster_timeout)  # before any other TensorFlow op
    run_dir = pathlib.Path(run_dir)
    config_path = run_dir / "config.json"
    saved = {}
    if resume:
        if not config_path.exists():
            raise RunError(f"--resume given but {run_dir} holds no run (no config.json)")
        saved = json.loads(config_path.read_text())
        model_cfg = ModelConfig(**saved["model"])
        train_cfg = TrainConfig(**{**saved["train"], "epochs": max(train_cfg.epochs, saved["train"]["epochs"])})
    elif config_path.exists() and (cluster.is_chief or (run_dir / "checkpoints").exists()):
        raise RunError(f"{run_dir} already holds a run: pass --resume to continue it or pick another --run-dir")
    if train_cfg.init_from and not resume:
        model_cfg = dataclasses.replace(exported_model_config(train_cfg.init_from), beta=model_cfg.beta,
                                        bfloat16=model_cfg.bfloat16)
    _check(train_cfg, model_cfg)
    if train_cfg.batch_size % cluster.strategy.num_replicas_in_sync:
        raise RunError(f"--batch-size {train_cfg.batch_size} does not split evenly over "
                       f"{cluster.strategy.num_replicas_in_sync} replicas")

    tf_keras.utils.set_random_seed(train_cfg.seed)
    images, _ = data.load_mnist("train", data_dir, limit=train_cfg.train_limit)
    test_images, _ = data.load_mnist("test", data_dir, limit=train_cfg.train_limit)
    train_images, val_images = split_data(images, test_images, train_cfg)
    n = len(train_images)
    steps = steps_per_epoch(n, train_cfg.batch_size)

    # Non-chief workers write their (required) checkpoint copies to a temporary folder of their own.
    write_dir = run_dir if cluster.is_chief else run_dir / f".workertemp_{cluster.task.replace(':', '_')}"
    # The run's counters: plain local variables (every worker keeps the same values), outside the strategy's scope.
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
    with cluster.strategy.scope():
        vae = VAE(model_cfg)
        optimizer = tf_keras.optimizers.Adam(_learning_rate(train_cfg, train_cfg.epochs * steps))
        checkpoint = tf.train.Checkpoint(encoder_body=vae.encoder_body, decoder_body=vae.decoder_body,
                                         optimizer=optimizer, epoch=epoch_var, step_in_epoch=step_var,
                                         epoch_loss_sum=loss_sum)
        # Build the optimizer's slots now, so that a restore fills them at once.
        optimizer.build(vae.encoder_body.trainable_variables + vae.decoder_body.trainable_variables)
    epochs_manager = tf.train.CheckpointManager(checkpoint, write_dir / "checkpoints", max_to_keep=3)
    backup_manager = tf.train.CheckpointManager(checkpoint, write_dir / "backup", max_to_keep=1)
    # Every worker restores from the chief's files (a shared run folder), the way BackupAndRestore does.
    restore_from = tf.train.latest_checkpoint(run_dir / "backup") or tf.train.latest_checkpoint(
        run_dir / "checkpoints")
    init_from_weights = saved.get("init_from_checkpoint_hash")  # kept when resuming from a checkpoint
    if resume and restore_from:
        checkpoint.restore(restore_from).assert_existing_objects_matched()
        log.info("resumed from %s at epoch %d, step %d", restore_from, int(epoch_var), int(step_var))
    elif train_cfg.init_from:
        init_from_weights = checkpoint_hash(train_cfg.init_from)  # before the read: the weights it names
        log.info("weights from %s", load_exported_weights(vae, train_cfg.init_from))

    if cluster.is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(
            {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
             "data_dir": str(data_dir) if data_dir else "download", "train_images": n,
             "validation_images": len(val_images), "strategy": cluster.kind, "workers": cluster.workers,
             "replicas": cluster.strategy.num_replicas_in_sync,
             # The weights the run started from: export checks that --init-from still holds them before it copies
             # that folder's training record into this run's (a folder rewritten since would give another history).
             "init_from_checkpoint_hash": init_from_weights}, indent=2))
    history = [row for row in read_history(run_dir) if row["epoch"] < int(epoch_var)]

    objective = Objective(vae, train_cfg, model_cfg.beta)
    replicas = cluster.strategy.num_replicas_in_sync
    per_replica = train_cfg.batch_size // replicas
    d = model_cfg.encoded_size

    def replica_step(images_u8, indices, epoch):
        u, eps = example_draws(indices, epoch, train_cfg.seed, train_cfg.k, d)
        x = tf.cast(u < tf.cast(images_u8, tf.float32) / 255.0, tf.float32)
        loss, grads = objective(x, eps, train_cfg.batch_size)
        optimizer.apply_gradients(zip(grads, objective.encoder_vars + objective.decoder_vars, strict=True))
        return loss

    @tf.function
    def train_step(inputs, epoch):
        losses = cluster.strategy.run(replica_step, args=(*inputs, epoch))
        return cluster.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def batch_inputs(order, step):
        def value_fn(ctx):
            lo = step * train_cfg.batch_size + ctx.replica_id_in_sync_group * per_replica
            idx = order[lo : lo + per_replica]
            return tf.constant(train_images[idx]), tf.constant(idx.astype(np.int64))

        return cluster.strategy.experimental_distribute_values_from_function(value_fn)

    val_x = data.fixed_binarization(val_images)
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard")) if cluster.is_chief else None
    watchdog = Watchdog(step_timeout, "multi-worker training: no step finished (a peer stopped?)") \
        if cluster.kind == "multi-worker" else None
    ran = 0
    vae.step_losses = []  # the global batch losses of the steps this process ran (for tests and diagnostics)
    if int(epoch_var) >= train_cfg.epochs:
        log.info("run already has %d of %d epochs: nothing to do", int(epoch_var), train_cfg.epochs)
    while int(epoch_var) < train_cfg.epochs:
        epoch = int(epoch_var)
        order = epoch_permutation(n, train_cfg.seed, epoch)
        start, first = time.time(), int(step_var)
        epoch_t = tf.constant(epoch, tf.int64)
        for step in range(first, steps):
            loss = train_step(batch_inputs(order, step), epoch_t)
            loss_sum.assign_add(tf.cast(loss, tf.float64))
            vae.step_losses.append(float(loss))
            step_var.assign(step + 1)
            ran += 1
            if watchdog:
                watchdog.kick()
            if not math.isfinite(float(loss)):
                raise RunError(f"the loss is {float(loss)} at epoch {epoch + 1}, step {step + 1}: stopping")
            if verbose and (step + 1) % 100 == 0:
                rate = (step + 1 - first) * train_cfg.batch_size / (time.time() - start)
                log.info("epoch %d step %d/%d: loss %.2f (%.0f images/s)", epoch + 1, step + 1, steps,
                         float(loss_sum) / (step + 1), rate)
            if stop_after_steps is not None and ran >= stop_after_steps:
                backup_manager.save(checkpoint_number=epoch * steps + step + 1)
                log.info("stopping after %d steps (stop_after_steps)", ran)
                return vae
            if train_cfg.backup_every and (step + 1) % train_cfg.backup_every == 0 and step + 1 < steps:
                backup_manager.save(checkpoint_number=epoch * steps + step + 1)
        seconds = time.time() - start
        row = {"epoch": epoch, "loss": float(loss_sum) / steps}
        if cluster.is_chief:
            from training.evaluate import Model, score

            val = score(Model.from_keras(vae), val_x, train_cfg.validation_k, seed=0)
            row.update(val_loss=float(np.mean(val["elbo"])), val_nll_iwae=float(np.mean(val["nll"])),
                       val_kl=float(np.mean(val["kl"])), val_distortion=float(np.mean(val["distortion"])))
        row.update(learning_rate=current_learning_rate(optimizer), seconds=round(seconds, 1),
                   images_per_second=round((steps - first) * train_cfg.batch_size / seconds, 1))
        if watchdog:
            watchdog.kick()
        epoch_var.assign(epoch + 1)
        step_var.assign(0)
        loss_sum.assign(0.0)
        if cluster.is_chief:
            history.append(row)
            _write_history(run_dir, history)
            with writer.as_default(step=epoch + 1):
                for key, value in row.items():
                    if key != "epoch":
                        tf.summary.scalar(key, value)
            writer.flush()
        path = epochs_manager.save(checkpoint_number=epoch + 1)
        backup_manager.save(checkpoint_number=(epoch + 1) * steps)
        log.info("epoch %d/%d: %s; checkpoint %s", epoch + 1, train_cfg.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"), path)
    if watchdog:
        watchdog.stop()
    if not cluster.is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    return vae
