"""The post's two pictures (decoder modes of encoded test digits beside the digits; decoder modes of prior
samples) and a training-curve plot, as PNG files."""

import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image


def grid(images, columns, pad=2):
    """(N, 28, 28, 1) in [0, 1] -> one grayscale PIL image, `columns` wide, light grid lines."""
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), 0.5, np.float32)
    for i, img in enumerate(images):
        top, left = (pad + k * (size + pad) for k, size in zip(divmod(i, columns), (h, w), strict=True))
        canvas[top : top + h, left : left + w] = img[..., 0]
    return Image.fromarray((canvas * 255).round().astype(np.uint8), mode="L")


def _modes(logits):
    return (np.asarray(logits) > 0).astype(np.float32)


def reconstructions(model, x, n=10):
    """Top row: test digits (binarized); bottom row: decoder modes at their posterior means."""
    mean, _ = model.encode(tf.constant(x[:n]))
    return grid(np.concatenate([x[:n], _modes(model.decode(mean))]), columns=n)


def prior_samples(model, latent_size, n=40, columns=10, seed=7):
    """Decoder modes of latents drawn from the N(0, I) prior with a fixed seed."""
    z = tf.random.stateless_normal([n, latent_size], seed=[seed, 0])
    return grid(_modes(model.decode(z)), columns=columns)


def stage_label(record: dict) -> str:
    """The objective of a training run's record (metadata's `training` or one of its `earlier_stages`) and the digits
    its validation loss was computed on (records older than the `validation` setting validated on the test digits; a
    --train-limit run's digits are limited too)."""
    train = record.get("train") or {}
    objective = f"IWAE k={train.get('k')}" if train.get("objective") == "iwae" else "ELBO"
    digits = train.get("validation") or "test"
    if train.get("train_limit"):  # the held-out digits are then the last sixth of the first train_limit
        digits += f" of first {train['train_limit']:,}"
    return f"{objective}, val. {digits}"


def lineage(training: dict, find_training=lambda init_from, weights: None, _seen=None) -> list[tuple[str, list[dict]]]:
    """A version's training stages, oldest first, as (objective, per-epoch history): the runs its metadata records
    (`earlier_stages`, newest first, then its own) and, before them, those of the version the oldest started from
    (its `init_from`), when `find_training(init_from, weights)` returns that version's training record (weights: the
    checkpoint hash the oldest run recorded of it, or None). Stages without a history are left out."""
    stages = [*reversed(training.get("earlier_stages") or []), training]
    origin = (stages[0].get("train") or {}).get("init_from")
    seen = _seen or set()
    weights = stages[0].get("init_from_checkpoint_hash")
    earlier = find_training(origin, weights) if origin and origin not in seen else None  # a chain that loops ends
    if earlier == training:  # fine-tuned from its own folder and exported over it: that record is this one
        earlier = None
    before = lineage(earlier, find_training, seen | {origin}) if earlier else []
    return before + [(stage_label(stage), stage["history"]) for stage in stages if stage.get("history")]


def training_curve(stages, path):
    """Train loss and validation loss (nats) per epoch, stage after stage: `stages` is lineage()'s [(objective,
    history)]. The train loss is each stage's objective (negative ELBO or -IWAE_k), the validation loss always the
    negative ELBO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    start, values = 0, []
    for index, (label, rows) in enumerate(stages):
        epochs = [start + int(row["epoch"]) + 1 for row in rows]
        train, val = [float(row["loss"]) for row in rows], [float(row["val_loss"]) for row in rows]
        ax.plot(epochs, train, "C0.-", label="train (the stage's objective)" if index == 0 else None)
        ax.plot(epochs, val, "C1.-", label="validation (negative ELBO; digits per stage)" if index == 0 else None)
        if len(stages) > 1:
            ax.axvline(start + 0.5, color="0.6", lw=0.8)
            ax.annotate(label, (start + 0.7, 0.98), xycoords=("data", "axes fraction"), va="top", rotation=90,
                        fontsize=7, color="0.3")
        skip = max(1, len(rows) // 10) if index == 0 and len(rows) > 1 else 0  # the first epochs dwarf the rest
        values += train[skip:] + val[skip:]
        start += len(rows)
    ax.set_xlabel("epoch" if len(stages) == 1 else "epoch (stage after stage)")
    ax.set_ylabel("nats per image")
    if values:  # scaled to the later epochs (the first tenth of the first stage's run off the top)
        ax.set_ylim(min(values) - 2, max(values) + 2)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_all(out_dir, model, x, stages):
    """The three figures; `stages`: lineage()'s, for the training curve (none without a history)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reconstructions(model, x).save(out_dir / "reconstructions.png")
    latent_size = model.encode(tf.constant(x[:1]))[0].shape[-1]
    prior_samples(model, latent_size).save(out_dir / "prior_samples.png")
    if stages:
        training_curve(stages, out_dir / "training_curve.png")
