import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from training.model import ModelConfig
from training.train import RunError, TrainConfig, read_history, restore_weights, train


def test_tiny_training_run_loss_falls(tiny_run):
    run_dir, _ = tiny_run
    history = read_history(run_dir)
    assert [row["epoch"] for row in history] == [0, 1]
    assert history[1]["loss"] < history[0]["loss"] - 5, history
    assert all(np.isfinite(row["val_loss"]) for row in history)
    assert (run_dir / "tensorboard").is_dir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["train_limit"] == 200 and config["model"]["encoded_size"] == 16


def test_existing_run_without_resume_is_refused(tiny_run, mnist_dir):
    run_dir, _ = tiny_run
    with pytest.raises(RunError, match="already holds a run: pass --resume"):
        train(run_dir, ModelConfig(), TrainConfig(epochs=3, train_limit=200), data_dir=mnist_dir, verbose=0)


def test_resume_without_a_run_is_refused(tmp_path, mnist_dir):
    with pytest.raises(RunError, match="holds no run"):
        train(tmp_path, ModelConfig(), TrainConfig(), data_dir=mnist_dir, resume=True, verbose=0)


def test_resume_continues_from_the_last_checkpoint(tiny_run, tmp_path, mnist_dir):
    """A copy of the session's two-epoch run, resumed as after an interruption: one more epoch, not three."""
    run_dir, vae = tiny_run
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    restored, _, checkpoint = restore_weights(resumed)
    assert checkpoint.endswith("ckpt-2")
    for a, b in zip(vae.encoder_body.get_weights(), restored.encoder_body.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    # A second invocation asks for 3 epochs in all: it runs epoch 3 only, keeps the saved model config (the one
    # passed here is ignored) and appends to the history.
    again = train(resumed, ModelConfig(encoded_size=99), TrainConfig(epochs=3), data_dir=mnist_dir, resume=True,
                  verbose=0)
    assert len(again.step_losses) == 200 // 32, "one epoch of steps, not three"
    assert [row["epoch"] for row in read_history(resumed)] == [0, 1, 2]
    assert read_history(resumed)[:2] == read_history(run_dir)
    # What restore_weights would read back (its first call above already checked it restores), without building a
    # third model: the latest checkpoint and the saved config; the resumed model itself kept the 16 latents.
    config = json.loads((resumed / "config.json").read_text())
    assert tf.train.latest_checkpoint(resumed / "checkpoints").endswith("ckpt-3")
    assert config["model"]["encoded_size"] == 16 and again.config.encoded_size == 16
    assert config["train"]["epochs"] == 3 and config["train"]["train_limit"] == 200
