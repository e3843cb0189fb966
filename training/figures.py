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


def training_curve(history, path):
    """Train loss and held-out loss (negative ELBO, nats) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [float(row["loss"]) for row in history], label="train (negative ELBO, 1 sample)")
    ax.plot(epochs, [float(row["val_loss"]) for row in history], label="test (negative ELBO, 1 sample)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    # The first epoch's loss dwarfs the rest: scale the axis to the later epochs.
    later = [float(row[key]) for row in history[1:] or history for key in ("loss", "val_loss")]
    ax.set_ylim(min(later) - 2, max(later) + 2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_all(out_dir, model, x, history):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reconstructions(model, x).save(out_dir / "reconstructions.png")
    latent_size = model.encode(tf.constant(x[:1]))[0].shape[-1]
    prior_samples(model, latent_size).save(out_dir / "prior_samples.png")
    if history:
        training_curve(history, out_dir / "training_curve.png")
