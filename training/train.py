"""Training with Keras fit: a checkpoint (weights, optimizer, epoch) every epoch, --resume from the
latest one, TensorBoard logs and a CSV history for the training-curve plot."""

import csv
import dataclasses
import json
import logging
import pathlib

import tensorflow as tf
import tf_keras

from training import data
from training.model import VAE, ModelConfig, negative_log_likelihood

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    # Cosine decay to 5% of learning_rate over the planned run: the late low-rate epochs are what take
    # the ELBO well below the constant-rate figure.
    lr_schedule: str = "cosine"
    seed: int = 42
    train_limit: int | None = None


class RunError(Exception):
    """A run directory that does not fit the request (e.g. exists without --resume)."""


class _SaveEveryEpoch(tf_keras.callbacks.Callback):
    def __init__(self, manager, epoch_var):
        super().__init__()
        self.manager, self.epoch_var = manager, epoch_var

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_var.assign(epoch + 1)
        path = self.manager.save(checkpoint_number=epoch + 1)
        log.info("epoch %d checkpoint: %s", epoch + 1, path)


def _learning_rate(cfg, steps_per_epoch):
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    return tf_keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.epochs * steps_per_epoch, alpha=0.05)


def build(model_cfg, train_cfg, steps_per_epoch):
    """The VAE, compiled with Adam and the design's loss, and a checkpoint over everything that must
    survive an interruption."""
    vae = VAE(model_cfg)
    optimizer = tf_keras.optimizers.Adam(_learning_rate(train_cfg, steps_per_epoch))
    vae.vae.compile(optimizer=optimizer, loss=negative_log_likelihood)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(
        encoder_body=vae.encoder_body, decoder_body=vae.decoder_body, optimizer=optimizer, epoch=epoch
    )
    return vae, checkpoint, epoch


def read_history(run_dir):
    """The per-epoch rows of history.csv (epoch, loss, val_loss), [] before the first epoch."""
    path = pathlib.Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def restore_weights(run_dir):
    """The VAE of the latest checkpoint in run_dir (weights only), with its model config."""
    run_dir = pathlib.Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    vae = VAE(ModelConfig(**config["model"]))
    latest = tf.train.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise RunError(f"no checkpoint in {run_dir / 'checkpoints'}")
    ckpt = tf.train.Checkpoint(encoder_body=vae.encoder_body, decoder_body=vae.decoder_body)
    ckpt.restore(latest).expect_partial()
    return vae, config, latest


def train(run_dir, model_cfg, train_cfg, data_dir=None, resume=False, verbose=2):
    """Train into run_dir (resuming its last checkpoint with resume=True); returns the trained VAE."""
    run_dir = pathlib.Path(run_dir)
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.exists():
            raise RunError(f"--resume given but {run_dir} holds no run (no config.json)")
        saved = json.loads(config_path.read_text())
        model_cfg = ModelConfig(**saved["model"])
        epochs = train_cfg.epochs
        train_cfg = TrainConfig(**{**saved["train"], "epochs": max(epochs, saved["train"]["epochs"])})
    elif config_path.exists():
        raise RunError(f"{run_dir} already holds a run: pass --resume to continue it or pick another --run-dir")

    tf_keras.utils.set_random_seed(train_cfg.seed)
    images, _ = data.load_mnist("train", data_dir, limit=train_cfg.train_limit)
    test_images, _ = data.load_mnist("test", data_dir, limit=train_cfg.train_limit)
    steps_per_epoch = -(-len(images) // train_cfg.batch_size)
    vae, checkpoint, epoch = build(model_cfg, train_cfg, steps_per_epoch)

    run_dir.mkdir(parents=True, exist_ok=True)
    manager = tf.train.CheckpointManager(checkpoint, run_dir / "checkpoints", max_to_keep=3)
    if resume and manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s at epoch %d", manager.latest_checkpoint, int(epoch.numpy()))
    config_path.write_text(
        json.dumps(
            {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
             "data_dir": str(data_dir) if data_dir else "download", "train_images": len(images)},
            indent=2,
        )
    )
    initial_epoch = int(epoch.numpy())
    if initial_epoch >= train_cfg.epochs:
        log.info("run already has %d of %d epochs: nothing to do", initial_epoch, train_cfg.epochs)
    else:
        # A fixed binarization of the test set gives a comparable validation loss every epoch.
        test_x = data.fixed_binarization(test_images)
        vae.vae.fit(
            data.training_dataset(images, train_cfg.batch_size, train_cfg.seed + initial_epoch),
            epochs=train_cfg.epochs,
            initial_epoch=initial_epoch,
            validation_data=(test_x, test_x),
            validation_batch_size=500,
            verbose=verbose,
            callbacks=[
                _SaveEveryEpoch(manager, epoch),
                tf_keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
                tf_keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
            ],
        )
    return vae
