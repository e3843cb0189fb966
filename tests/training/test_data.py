import gzip
import http.server
import shutil
import threading

import numpy as np
import pytest

from training import data


def test_load_mnist_reads_real_idx_files(mnist_dir, caplog):
    images, labels = data.load_mnist("test", mnist_dir)
    assert images.shape == (1000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (1000,) and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    # The first test digits are a 7, a 2 and a 1 (as in every MNIST copy), and a subset is reported as such.
    assert labels[:3].tolist() == [7, 2, 1]
    assert "hold 1000 images, not the full 10000" in caplog.text


def test_load_mnist_images_and_labels_of_different_counts_is_an_error(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + (999).to_bytes(4, "big")
                                                                      + bytes(999)))
    with pytest.raises(data.DataError, match=r"hold \(1000, 28, 28\) images and \(999,\) labels"):
        data.load_mnist("test", tmp_path)


def test_binarize_matches_pixel_intensity_statistics(mnist_dir):
    images, _ = data.load_mnist("test", mnist_dir)
    x = data.binarize(images).numpy()
    assert set(np.unique(x)) <= {0.0, 1.0}
    # E[x] = pixel / 255: compare the mean over many pixels, and per-intensity groups (digits stay white).
    probs = images.astype(np.float64) / 255
    assert abs(x.mean() - probs.mean()) < 0.002
    assert x[images == 0].max() == 0 and x[images == 255].min() == 1
    mid = (images > 100) & (images < 150)
    assert abs(x[mid].mean() - probs[mid].mean()) < 0.02


def test_fixed_binarization_is_repeatable_and_seed_dependent(mnist_dir):
    images, _ = data.load_mnist("test", mnist_dir, limit=50)
    a, b = data.fixed_binarization(images, 0), data.fixed_binarization(images, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.fixed_binarization(images, 1))


def test_training_dataset_shuffles_and_rebinarizes_each_epoch(mnist_dir):
    images, _ = data.load_mnist("train", mnist_dir, limit=256)
    ds = data.training_dataset(images, batch_size=64, seed=0)
    first = np.concatenate([x.numpy() for x, _ in ds])
    second = np.concatenate([x.numpy() for x, _ in ds])
    assert first.shape == (256, 28, 28, 1)
    assert not np.array_equal(first, second)
    # Same images, other order: the per-image ink totals agree as multisets up to binarization noise.
    assert abs(first.sum() - second.sum()) / first.sum() < 0.02
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_load_mnist_missing_folder_names_it(tmp_path):
    with pytest.raises(data.DataError, match="does not exist: .*nowhere"):
        data.load_mnist("train", tmp_path / "nowhere")


def test_load_mnist_missing_file_names_it(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(data.DataError, match="not found: .*t10k-labels-idx1-ubyte.gz"):
        data.load_mnist("test", tmp_path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"this is not gzip", "not a readable gzip file"),
        (gzip.compress(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3, mtime=0), "truncated"),
        (gzip.compress(b"\x12\x34\x56\x78", mtime=0), "no IDX uint8 header"),
        (gzip.compress(bytes(range(256)) * 64, mtime=0)[:40] + b"\xff" * 200, "not a readable gzip file"),
    ],
    # Named, not by their bytes: every pytest-xdist worker must collect the same test IDs.
    ids=["not-gzip", "truncated", "no-header", "corrupt-stream"],
)
def test_load_mnist_corrupt_file_names_it(tmp_path, mnist_dir, content, message):
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(data.DataError, match=f"{message}.*t10k-images-idx3-ubyte.gz|t10k-images.*{message}"):
        data.load_mnist("test", tmp_path)


def test_download_fetches_the_four_files_over_http(tmp_path, mnist_dir, monkeypatch):
    """The no-folder path, against a local HTTP server holding the shipped subset (no internet in tests)."""
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(mnist_dir), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(data, "MIRROR", f"http://127.0.0.1:{server.server_port}/")
        monkeypatch.setattr(data, "DEFAULT_CACHE", tmp_path / "cache")
        images, labels = data.load_mnist("test")  # no folder given: download into the cache
        folder = tmp_path / "cache"
    finally:
        server.shutdown()
    assert images.shape == (1000, 28, 28, 1) and labels.shape == (1000,)
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for f in data.FILES.values() for n in f[:2])
