"""MNIST from the four standard IDX .gz files, dynamically binarized as x ~ Bernoulli(pixel / 255)."""

import gzip
import logging
import pathlib
import urllib.request
import zlib

import numpy as np
import tensorflow as tf

from training.errors import DataError

log = logging.getLogger(__name__)

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
# The canonical mirror of Yann LeCun's files, the one tf.keras.datasets and torchvision use.
MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "mnist_vae" / "mnist"


def _read_idx(path, expected_dims):
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"MNIST file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"MNIST file is not a readable gzip file: {path} ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != expected_dims:
        raise DataError(f"MNIST file has no IDX uint8 header with {expected_dims} dimensions: {path}")
    header_end = 4 + 4 * expected_dims
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_dims))
    if len(raw) != header_end + int(np.prod(dims)):
        raise DataError(f"MNIST file is truncated or has trailing bytes: {path} (header says {dims})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(dims)


def download(cache_dir=DEFAULT_CACHE):
    """Fetch the four files into cache_dir (once) and return it."""
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for images, labels, _ in FILES.values():
        for name in (images, labels):
            target = cache_dir / name
            if not target.exists():
                log.info("downloading %s%s", MIRROR, name)
                tmp = target.with_suffix(".part")
                try:
                    urllib.request.urlretrieve(MIRROR + name, tmp)
                except OSError as e:
                    raise DataError(f"could not download {MIRROR + name}: {e}") from None
                tmp.rename(target)
    return cache_dir


def load_mnist(split, data_dir=None, limit=None):
    """(images uint8 (N, 28, 28, 1), labels uint8 (N,)) for split 'train' or 'test'.

    data_dir is a folder holding the four IDX .gz files (the full set, or a subset in the same format such as
    tests/data/mnist); None downloads them once into ~/.cache."""
    image_file, label_file, count = FILES[split]
    folder = pathlib.Path(data_dir) if data_dir is not None else download(DEFAULT_CACHE)
    if not folder.is_dir():
        raise DataError(f"MNIST data folder does not exist: {folder}")
    images = _read_idx(folder / image_file, 3)
    labels = _read_idx(folder / label_file, 1)
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1] or not len(images):
        raise DataError(
            f"MNIST {split} files in {folder} hold {images.shape} images and {labels.shape} labels, "
            f"expected (N, 28, 28) and (N,) with N > 0"
        )
    if len(images) != count:  # a subset (the tests ship 1,000 + 1,000 digits): fine, but say so
        log.warning("MNIST %s files in %s hold %d images, not the full %d", split, folder, len(images), count)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images[..., None], labels


def binarize(images, seed=None):
    """x ~ Bernoulli(pixel / 255): uint8 (..., 28, 28, 1) -> float32 {0, 1}.

    With an int seed pair the draw is stateless (the same every time: used for evaluation)."""
    probs = tf.cast(images, tf.float32) / 255.0
    if seed is None:
        u = tf.random.uniform(tf.shape(probs))
    else:
        u = tf.random.stateless_uniform(tf.shape(probs), seed=seed)
    return tf.cast(u < probs, tf.float32)


def training_dataset(images, batch_size, seed):
    """Shuffled each epoch, then batched, then binarized afresh per batch (one vectorised op per batch,
    not one per image), yielding (x, x) for Keras fit."""
    ds = tf.data.Dataset.from_tensor_slices(images)
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(lambda x: binarize(x), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x: (x, x))
    return ds.prefetch(tf.data.AUTOTUNE)


def fixed_binarization(images, seed=0):
    """The evaluation set: one binarization with a fixed seed, as a float32 numpy array."""
    return binarize(images, seed=tf.constant([seed, 0], tf.int64)).numpy()
