"""One data plane behind every protocol: the same work gets the same answer and the same limit on /v1, KServe v2 and
TF Serving REST, and score work is sized in decodes (k x images) wherever it comes from."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

MODEL = "mnist_vae"
CAP = 64  # VAE_MAX_POSTERIOR_SAMPLES in these tests


def v1_score(client, images, k, seed):
    response = client.post("/v1/score", params={"k": k, "seed": seed}, json={"images": images[..., 0].tolist()})
    return response.status_code, response.json()


def v2_score(client, images, k, seed):
    body = {"inputs": [
        {"name": "images", "datatype": "FP32", "shape": list(images.shape), "data": images.ravel().tolist()},
        {"name": "k", "datatype": "INT32", "shape": [1], "data": [k]},
        {"name": "seeds", "datatype": "INT64", "shape": [len(images)], "data": list(range(seed, seed + len(images)))},
    ]}
    response = client.post(f"/v2/models/{MODEL}-score/infer", json=body)
    return response.status_code, response.json()


def tfserving_score(client, images, k, seed):
    body = {"signature_name": "score", "inputs": {"images": images.tolist(), "k": k,
                                                  "seeds": list(range(seed, seed + len(images)))}}
    response = client.post(f"/v1/models/{MODEL}:predict", json=body)
    return response.status_code, response.json()


PROTOCOLS = {"v1": v1_score, "v2": v2_score, "tfserving": tfserving_score}


def nll_of(protocol: str, answer: dict) -> list[float]:
    if protocol == "v1":
        return [row["nll"] for row in answer["scores"]]
    if protocol == "v2":
        return next(out["data"] for out in answer["outputs"] if out["name"] == "nll")
    return answer["outputs"]["nll"]


@pytest.fixture(scope="module")
def capped(make_client, fake_base_path):
    """A client whose score calls are counted: the decodes (k x rows) each score signature call receives."""
    # schema 2 has score; a long queue deadline: every request waits its turn instead of being refused
    client = make_client(model_dir=fake_base_path / "2", max_posterior_samples=CAP, queue_deadline_ms=600_000)
    model = client.app.state.dataplane.registry.routing.default.serving.model
    calls, lock = [], threading.Lock()
    score = model.score

    def counted(images, k, seeds):
        with lock:
            calls.append(k * len(images))
        return score(images, k, seeds)

    model.score = counted
    yield client, calls
    model.score = score


def test_concurrent_capped_score_requests_never_exceed_the_cap_per_model_call(capped, digits):
    """32 requests at the cap from all three protocols at once: every model call holds at most CAP decodes."""
    client, calls = capped
    calls.clear()
    images = np.repeat(digits, 2, axis=0)[:8]  # 8 images x k=8 = 64 decodes: each request is at the cap
    jobs = [(name, images, 8, seed) for seed in range(11) for name in PROTOCOLS][:32]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda job: PROTOCOLS[job[0]](client, *job[1:]), jobs))
    assert [status for status, _ in answers] == [200] * len(jobs), [a for a in answers if a[0] != 200][:1]
    assert calls and max(calls) <= CAP, calls
    assert sum(calls) == 64 * len(jobs)  # every request computed exactly once


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_score_over_the_cap_refused_with_the_same_message_on_every_protocol(capped, digits, protocol):
    client, calls = capped
    calls.clear()
    status, answer = PROTOCOLS[protocol](client, digits[:4], 17, 0)  # 4 x 17 = 68 > 64
    expected_status = 422 if protocol == "v1" else 400
    message = answer.get("detail") or answer.get("error")
    assert (status, message) == (expected_status, "k x images is 17 x 4 = 68, the limit is 64 "
                                                  "(VAE_MAX_POSTERIOR_SAMPLES): send fewer images or a smaller k")
    assert calls == []


def test_the_same_score_work_gets_the_same_answer_on_every_protocol(capped, digits):
    client, _ = capped
    results = {}
    for protocol, call in PROTOCOLS.items():
        status, answer = call(client, digits[:3], 4, 7)
        assert status == 200, answer
        results[protocol] = np.array(nll_of(protocol, answer))
    np.testing.assert_allclose(results["v2"], results["v1"], rtol=1e-5)
    np.testing.assert_allclose(results["tfserving"], results["v1"], rtol=1e-5)


def test_images_outside_0_1_refused_on_every_protocol(client, digits):
    bad = digits[:1] * 2
    v1 = client.post("/v1/encode", json={"images": bad[..., 0].tolist()})
    v2 = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "images", "datatype": "FP32", "shape": list(bad.shape), "data": bad.ravel().tolist()}]})
    tfs = client.post(f"/v1/models/{MODEL}:predict", json={"instances": bad.tolist()})
    assert (v1.status_code, v2.status_code, tfs.status_code) == (422, 400, 400)
    assert "'images' values must lie in [0, 1]" in v1.json()["detail"]
    assert v2.json()["error"] == tfs.json()["error"] == v1.json()["detail"]


def test_sample_count_limit_is_the_same_on_every_protocol(client):
    limit = client.app.state.settings.max_samples
    v1 = client.get("/v1/samples", params={"n": limit + 1, "seed": 1, "format": "json"})
    v2 = client.post(f"/v2/models/{MODEL}-sample/infer", json={"inputs": [
        {"name": "num_samples", "datatype": "INT32", "shape": [1], "data": [limit + 1]},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]}]})
    tfs = client.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "sample",
                                                           "inputs": {"num_samples": limit + 1, "seed": 1}})
    expected = f"n must be between 1 and {limit}, got {limit + 1} (VAE_MAX_SAMPLES)"
    assert (v1.status_code, v1.json()["detail"]) == (422, expected)
    assert (v2.status_code, v2.json()["error"]) == (400, expected)
    assert (tfs.status_code, tfs.json()["error"]) == (400, expected)


def test_score_work_that_cannot_finish_within_the_deadline_is_refused_at_once(make_real_client, real_model_dir,
                                                                             digits):
    """Admission by work: behind a backlog longer than the deadline, a small score request gets 503 and Retry-After
    at once instead of a 504 after waiting (the batcher knows the model time per decode from the calls it made)."""
    # the real model: its score calls take long enough to build a backlog
    client = make_real_client(real_model_dir.parent / "2", max_posterior_samples=CAP, queue_deadline_ms=200)
    assert v1_score(client, digits[:1], 1, 0)[0] == 200  # one call: the time per decode is known from now on
    images = np.repeat(digits, 2, axis=0)[:8]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda seed: v2_score(client, images, 8, seed), range(8)))
    refused = [answer for status, answer in answers if status == 503]
    assert refused and {status for status, _ in answers} <= {200, 503}, answers
    assert "over the 0.2 s deadline (VAE_QUEUE_DEADLINE_MS); retry later" in refused[0]["error"]
