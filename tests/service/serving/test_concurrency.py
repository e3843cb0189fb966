"""Many clients at once through the real app: each gets its own image's result, batching on and off agree, and a
full queue answers 503 with Retry-After."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    """48 distinct (28, 28) inputs: the fixture digits, shifted and dimmed."""
    variants = [np.roll(digits[..., 0], shift, axis=2) * scale for shift in (0, 3, -3) for scale in (1.0, 0.5)]
    return np.concatenate(variants).astype(np.float32)


def encode_concurrently(client, images: np.ndarray, threads: int = 48) -> list:
    def one(image: np.ndarray):
        return client.post("/v1/encode", json={"images": [image.tolist()]})

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, images))


def test_encode_concurrent_clients_get_their_own_result(client, signatures, images):
    responses = encode_concurrently(client, images)
    assert [r.status_code for r in responses] == [200] * len(images)
    expected = signatures["encode"](images=images[..., None])["mean"].numpy()
    got = np.concatenate([r.json()["mean"] for r in responses])
    # Batch composition changes float rounding in the convolutions (~1e-7), never which image a result belongs to.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    nearest = np.abs(got[:, None, :] - expected[None, :, :]).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(nearest, np.arange(len(images)))


def test_encode_batching_off_equals_batching_on(client, make_client, images):
    on = encode_concurrently(client, images)
    off = encode_concurrently(make_client(batch_max_size=1), images)
    assert [r.status_code for r in on + off] == [200] * (2 * len(images))
    for key in ("mean", "covariance", "scale_tril"):
        np.testing.assert_allclose(np.concatenate([r.json()[key] for r in on]),
                                   np.concatenate([r.json()[key] for r in off]), rtol=1e-4, atol=1e-5)


def test_encode_full_queue_answers_503_with_retry_after(make_client, images):
    client = make_client(batch_max_size=1, queue_max=1, retry_after_s=2)
    responses = encode_concurrently(client, np.concatenate([images] * 3), threads=96)
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, "96 concurrent requests against a queue of 1 should overflow it"
    assert rejected[0].headers["retry-after"] == "2"
    assert rejected[0].json()["detail"] == "encode queue is full (1 requests waiting); retry later"
    assert client.post("/v1/encode", json={"images": [images[0].tolist()]}).status_code == 200
