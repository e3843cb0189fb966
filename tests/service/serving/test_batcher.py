"""The batcher on its own: merging, the idle fast path, limits, errors, cancellation, stopping. The batch function here
is a plain function held on a threading.Event to control timing; the model is exercised in the route tests (here only
to check that VAE_BATCH_TRIM reaches a loaded version's batchers)."""

import asyncio
import threading
import time

import numpy as np
import pytest

from service.serving.batcher import (
    TRIM_FROM,
    Batcher,
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
    bucket_sizes,
    shared,
    stacked,
)
from service.serving.metrics import Metrics


class Recorder:
    """A batch function that records each call's payloads and can be held until released."""

    def __init__(self, hold: bool = False):
        self.calls: list[list] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, payloads):
        self.calls.append(list(payloads))
        self.started.set()
        self.release.wait(5)
        return [p * 10 for p in payloads]


def make(fn, **overrides) -> Batcher:
    options = {"max_size": 256, "max_delay_s": 0.002, "queue_max": 64} | overrides
    return Batcher("test", fn, metrics=Metrics(), **options)


async def busy(**overrides) -> tuple[Batcher, Recorder, asyncio.Task]:
    """A started batcher whose model thread is held in a model call for request 0, so that later requests queue up."""
    recorder = Recorder(hold=True)
    batcher = make(recorder, **overrides)
    batcher.start()
    first = asyncio.create_task(batcher.submit(0, 1))
    await asyncio.to_thread(recorder.started.wait, 5)
    return batcher, recorder, first


def run_held(requests: list[tuple[int, int]], **overrides) -> tuple[list[list], list]:
    """Submit (payload, size) `requests` while the model thread is held on request 0, then release it.
    Returns the batch function's calls and every caller's result, request 0 first."""

    async def scenario():
        batcher, recorder, first = await busy(**overrides)
        queued = [asyncio.create_task(batcher.submit(payload, size)) for payload, size in requests]
        await asyncio.sleep(0.01)
        recorder.release.set()
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return recorder.calls, results

    return asyncio.run(scenario())


def test_submit_merges_waiting_requests_into_one_call():
    calls, results = run_held([(i, 1) for i in range(1, 11)])
    assert calls == [[0], list(range(1, 11))]
    assert results == [i * 10 for i in range(11)]


def test_submit_respects_max_size():
    calls, _ = run_held([(i, 2) for i in range(1, 6)], max_size=4)  # 2 images each: two fit per batch
    assert calls == [[0], [1, 2], [3, 4], [5]]


def test_submit_max_size_one_calls_once_per_request():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_size=1)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(5)))
        await batcher.stop()
        return recorder.calls, results

    calls, results = asyncio.run(scenario())
    assert calls == [[i] for i in range(5)]
    assert results == [i * 10 for i in range(5)]


def test_submit_lone_request_does_not_wait_for_delay():
    async def scenario():
        batcher = make(Recorder(), max_delay_s=2.0)
        batcher.start()
        start = time.perf_counter()
        await batcher.submit(1, 1)
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert asyncio.run(scenario()) < 0.2  # one loop turn, not the 2 s delay


def test_submit_idle_model_waits_for_requests_parsed_in_the_same_loop_turn():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_delay_s=2.0)
        batcher.start()

        async def handler(i: int) -> int:
            time.sleep(0.02)  # parsing a request body, on the event loop
            return await batcher.submit(i, 1)

        results = await asyncio.gather(*(handler(i) for i in range(4)))
        await batcher.stop()
        return recorder.calls, results

    calls, results = asyncio.run(scenario())
    assert calls == [[0, 1, 2, 3]]
    assert results == [0, 10, 20, 30]


def test_next_batch_starts_while_the_event_loop_is_busy():
    """The model thread collects its own batches: a busy event loop does not hold up the next model call."""
    async def scenario():
        batcher, recorder, first = await busy()
        queued = [asyncio.create_task(batcher.submit(i, 1)) for i in (1, 2, 3)]
        await asyncio.sleep(0)  # the three are queued
        recorder.release.set()
        time.sleep(0.3)  # blocks the event loop: only the model thread can move
        calls_while_blocked = list(recorder.calls)
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return calls_while_blocked, results

    calls, results = asyncio.run(scenario())
    assert calls == [[0], [1, 2, 3]]
    assert results == [0, 10, 20, 30]


def test_submit_full_queue_raises():
    async def scenario():
        batcher, recorder, first = await busy(queue_max=2)
        queued = [asyncio.create_task(batcher.submit(i, 1)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="test queue is full"):
            await batcher.submit(3, 1)
        recorder.release.set()
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [0, 10, 20]


def test_submit_error_reaches_every_caller():
    def broken(payloads):
        raise ValueError(f"boom on {len(payloads)}")

    async def scenario():
        batcher = make(broken)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(i, 1) for i in range(3)), return_exceptions=True)
        after = await asyncio.gather(batcher.submit(9, 1), return_exceptions=True)  # the model thread survives
        await batcher.stop()
        return outcomes + after

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ValueError) and str(o).startswith("boom on") for o in outcomes)


def test_submit_wrong_result_count_fails_every_caller():
    async def scenario():
        batcher = make(lambda payloads: payloads[:-1])
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(i, 1) for i in range(2)), return_exceptions=True)
        await batcher.stop()
        return outcomes

    for outcome in asyncio.run(scenario()):
        assert isinstance(outcome, RuntimeError)
        assert "results for" in str(outcome)


def test_submit_cancelled_caller_is_skipped():
    async def scenario():
        batcher, recorder, first = await busy()
        gone = asyncio.create_task(batcher.submit(1, 1))
        kept = asyncio.create_task(batcher.submit(2, 1))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away while queued
        recorder.release.set()
        results = await asyncio.gather(first, kept)
        await batcher.stop()
        return recorder.calls, results, gone.cancelled()

    calls, results, cancelled = asyncio.run(scenario())
    assert calls == [[0], [2]]
    assert results == [0, 20]
    assert cancelled


def test_stop_fails_queued_and_running_requests_at_once():
    async def scenario():
        batcher, recorder, first = await busy()
        queued = asyncio.create_task(batcher.submit(1, 1))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(batcher.stop())  # waits for the model call to end
        outcomes = await asyncio.gather(first, queued, return_exceptions=True)
        stopped_early = stopping.done()
        recorder.release.set()
        await stopping
        return outcomes, stopped_early, batcher._thread.is_alive()

    outcomes, stopped_early, alive = asyncio.run(scenario())
    assert all(isinstance(o, ShuttingDownError) for o in outcomes)
    assert not stopped_early  # the model call was still running
    assert not alive


def test_stop_while_the_model_thread_waits_for_company():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_delay_s=2.0)
        batcher.start()
        request = asyncio.create_task(batcher.submit(1, 1))
        await asyncio.sleep(0)  # queued
        time.sleep(0.05)  # the model thread takes it and waits for a loop turn, which cannot run yet
        start = time.perf_counter()
        await batcher.stop(timeout_s=5)
        outcome = await asyncio.gather(request, return_exceptions=True)
        return outcome[0], recorder.calls, time.perf_counter() - start, batcher._thread.is_alive()

    outcome, calls, stop_s, alive = asyncio.run(scenario())
    assert isinstance(outcome, ShuttingDownError)  # unanswered at stop(): failed at once, from the loop's records
    assert calls == []  # and not computed afterwards: the model thread skips requests already answered
    assert stop_s < 1 and not alive


def test_stop_with_a_full_queue_ends_the_model_thread():
    async def scenario():
        batcher, recorder, first = await busy(queue_max=2)
        queued = [asyncio.create_task(batcher.submit(i, 1)) for i in (1, 2)]
        await asyncio.sleep(0)  # the queue is full: the stop sentinel has to wait for room
        stopping = asyncio.create_task(batcher.stop(timeout_s=5))
        await asyncio.sleep(0.05)
        recorder.release.set()
        await stopping
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        return outcomes, recorder.calls, batcher._thread.is_alive()

    outcomes, calls, alive = asyncio.run(scenario())
    assert all(isinstance(o, ShuttingDownError) for o in outcomes)
    assert calls == [[0]] and not alive


def test_request_past_the_queue_deadline_is_not_computed():
    async def scenario():
        batcher, recorder, first = await busy(deadline_s=0.05)
        late = asyncio.create_task(batcher.submit(1, 1))
        await asyncio.sleep(0.15)  # queued behind the held call, past the deadline
        recorder.release.set()
        outcomes = await asyncio.gather(first, late, return_exceptions=True)
        fresh = await batcher.submit(2, 1)
        await batcher.stop()
        return outcomes, fresh, recorder.calls, batcher

    (first, late), fresh, calls, batcher = asyncio.run(scenario())
    assert first == 0 and fresh == 20
    assert isinstance(late, DeadlineExceededError)
    assert late.message == "test: waited in the queue longer than 50 ms; retry later"
    assert calls == [[0], [2]]  # the late request never reached the model
    labels = {"signature": "test", "version": ""}
    expired = batcher._metrics.registry.get_sample_value("vae_batch_expired_total", labels)
    assert expired == 1


def test_submit_after_stop_fails_at_once():
    async def scenario():
        batcher = make(Recorder())
        batcher.start()
        await batcher.stop()
        with pytest.raises(ShuttingDownError, match="test batcher stopped"):
            await asyncio.wait_for(batcher.submit(1, 1), 1)

    asyncio.run(scenario())


def test_failing_same_batch_does_not_end_the_model_thread():
    def same_batch(first, other):
        raise ValueError("bug")

    calls, results = run_held([(1, 1), (2, 1)], same_batch=same_batch)
    assert calls == [[0], [1], [2]]  # each in a batch of its own
    assert results == [0, 10, 20]


@pytest.mark.parametrize("options,message", [
    ({"max_size": 0}, "max size must be >= 1, got 0"),
    ({"max_delay_s": -1}, "max delay must be >= 0, got -1"),
    ({"queue_max": 0}, "queue max must be >= 1, got 0"),
    ({"deadline_s": 0}, "queue deadline must be > 0, got 0"),
])
def test_batcher_bad_settings_fail_at_build(options, message):
    with pytest.raises(ValueError, match=message):
        make(Recorder(), **options)


def test_submit_same_batch_keeps_other_payloads_apart():
    calls, results = run_held([(p, 1) for p in (5, 5, 7, 7, 5)], same_batch=lambda a, b: a == b)
    assert calls == [[0], [5, 5], [7, 7], [5]]
    assert results == [0, 50, 50, 70, 70, 50]


def test_busy_model_cuts_a_batch_to_a_padded_size_and_runs_the_rest_next():
    calls, results = run_held([(i, 1) for i in range(1, 31)], trim_to=bucket_sizes(256))
    assert calls == [[0], list(range(1, 29)), [29, 30]]  # 30 would be padded to 32: 28 now, 2 first in the next call
    assert results == [i * 10 for i in range(31)]


def test_busy_model_does_not_cut_a_batch_under_trim_from():
    calls, _ = run_held([(i, 1) for i in range(1, TRIM_FROM)], trim_to=bucket_sizes(256))
    assert calls == [[0], list(range(1, TRIM_FROM))]  # padded to 16: a call of its own would cost more


def test_cut_leaves_a_batch_whole_if_the_exact_prefix_is_under_half_of_it():
    calls, _ = run_held([(1, 1), (2, 20)], trim_to=bucket_sizes(256))  # 21 images; only the prefix of 1 is exact
    assert calls == [[0], [1, 2]]


def test_cut_keeps_a_same_batch_misfit_after_the_cut_rows():
    calls, results = run_held([(5, 1)] * 17 + [(7, 1)], same_batch=lambda a, b: a == b, trim_to=bucket_sizes(256))
    assert calls == [[0], [5] * 16, [5], [7]]
    assert results == [0] + [50] * 17 + [70]


def test_cut_counts_only_requests_still_waiting():
    async def scenario():
        batcher, recorder, first = await busy(trim_to=bucket_sizes(256))
        queued = [asyncio.create_task(batcher.submit(i, 1)) for i in range(1, 19)]
        await asyncio.sleep(0.01)
        queued[0].cancel()
        queued[1].cancel()
        await asyncio.sleep(0.01)
        recorder.release.set()
        await asyncio.gather(first, *queued, return_exceptions=True)
        await batcher.stop()
        return recorder.calls

    assert asyncio.run(scenario()) == [[0], list(range(3, 19))]  # 16 left of 18: one call, nothing cut


def test_idle_model_does_not_cut_a_batch():
    async def scenario():
        recorder = Recorder()
        batcher = make(recorder, max_delay_s=2.0, trim_to=bucket_sizes(256))
        batcher.start()
        await asyncio.sleep(0.02)  # the model thread is waiting for a first request
        results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(30)))
        await batcher.stop()
        return recorder.calls, results

    calls, results = asyncio.run(scenario())
    assert calls == [list(range(30))]  # answered at once, padded, rather than two a call later
    assert results == [i * 10 for i in range(30)]


def test_stacked_splits_outputs_by_rows():
    run = stacked(lambda x: {"double": x * 2, "sum": x.sum(axis=1)})
    out = run([np.ones((1, 3)), np.full((2, 3), 2.0)])
    np.testing.assert_array_equal(out[0]["double"], [[2, 2, 2]])
    np.testing.assert_array_equal(out[1]["sum"], [6, 6])


def test_stacked_pads_to_bucket_and_drops_padding():
    seen = []

    def fn(x):
        seen.append(len(x))
        return {"same": x}

    out = stacked(fn, buckets=[1, 2, 4])([np.ones((1, 2)), np.full((2, 2), 3.0)])
    assert seen == [4]
    np.testing.assert_array_equal(out[1]["same"], np.full((2, 2), 3.0))
    assert stacked(fn, buckets=[1, 2, 4])([np.ones((5, 2))])[0]["same"].shape == (5, 2)  # over the last bucket


def test_stacked_wrong_output_rows_raises():
    with pytest.raises(RuntimeError, match="output y has 1 rows for 2 inputs"):
        stacked(lambda x: {"y": x[:1]})([np.ones((2, 3))])


@pytest.mark.parametrize("max_size,sizes", [
    (1, [1]), (2, [1, 2]), (7, [1, 2, 3, 4, 6, 7]),
    (40, [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40]),
    (256, [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256]),
])
def test_bucket_sizes_step_up_to_max_size(max_size, sizes):
    assert bucket_sizes(max_size) == sizes


def test_shared_calls_once_for_identical_arguments():
    calls = []

    def sample(n, seed):
        calls.append((n, seed))
        return {"n": n, "seed": seed}

    assert shared(sample)([(2, 7), (2, 7)]) == [{"n": 2, "seed": 7}] * 2
    assert calls == [(2, 7)]
    with pytest.raises(RuntimeError, match="different arguments"):
        shared(sample)([(2, 7), (3, 7)])


def run_growing(requests: list[tuple[int, int]]) -> tuple[list, list]:
    """A batcher of max_size 16 ready at 4 (sizes up to 4 warmed): its model thread warms 6, 8, 12, 16 itself. The
    first warm is held until `requests` are queued. Returns the warms and calls in their order, and the results."""
    events: list[tuple] = []
    release = threading.Event()

    def warm(size: int) -> None:
        release.wait(5)
        events.append(("warm", size))

    def batch_fn(payloads):
        events.append(("call", list(payloads)))
        return [p * 10 for p in payloads]

    async def scenario():
        batcher = make(batch_fn, max_size=16, ready_size=4, warm=warm)
        batcher.start()
        queued = [asyncio.create_task(batcher.submit(payload, size)) for payload, size in requests]
        await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(*queued)
        for _ in range(500):  # the idle model thread warms the rest
            if ("warm", 16) in events:
                break
            await asyncio.sleep(0.01)
        await batcher.stop()
        return events, results

    return asyncio.run(scenario())


def test_batches_grow_only_up_to_the_sizes_warmed():
    events, results = run_growing([(i, 1) for i in range(10)])
    # warm 6 (idle, at start), batch of 6 collected, warm 8 (one per batch), its call, then the other 4
    assert events[:4] == [("warm", 6), ("warm", 8), ("call", list(range(6))), ("warm", 12)]
    assert events[4:] == [("call", list(range(6, 10))), ("warm", 16)]
    assert results == [i * 10 for i in range(10)]


def test_request_larger_than_the_warmed_sizes_warms_its_size_first():
    events, results = run_growing([(7, 10)])  # 10 images: padded to 12
    assert events == [("warm", 6), ("warm", 8), ("warm", 12), ("call", [7]), ("warm", 16)]
    assert results == [70]


def test_failed_warm_stops_the_growth_and_keeps_serving():
    def warm(size: int) -> None:
        raise RuntimeError("no memory")

    calls, results = run_held([(i, 1) for i in range(1, 11)], max_size=16, ready_size=4, warm=warm)
    assert all(len(call) <= 4 for call in calls)  # batches never pass the sizes warmed before ready
    assert results == [i * 10 for i in range(11)]


def test_padded_signatures_cut_their_batches_unless_batch_trim_is_off(client, make_client):
    """VAE_BATCH_TRIM reaches the batchers of a loaded version: the padded signatures cut to their padded sizes."""
    batchers = client.app.state.dataplane.registry.routing.default.serving.batchers
    for batcher in (batchers.encode, batchers.decode, batchers.reconstruct):
        assert batcher.trim_to == frozenset(bucket_sizes(batcher.max_size)), batcher.name
    assert batchers.sample.trim_to == frozenset()  # one call per (n, seed): nothing is padded
    untrimmed = make_client(batch_trim=False).app.state.dataplane.registry.routing.default.serving.batchers
    assert all(batcher.trim_to == frozenset() for batcher in untrimmed.all())


def test_a_seeded_estimate_refuses_work_behind_a_long_backlog_from_the_first_request():
    """Admission by work before any call: the version's warm-up seeds the time per row, so a burst of costly
    requests at start is refused at once instead of queuing for calls of seconds each; an empty queue takes one."""
    async def scenario():
        recorder = Recorder(hold=True)
        batcher = make(recorder, deadline_s=1.0)
        batcher.seed(0.1)  # 0.1 s per row: 10 rows fill the deadline
        batcher.start()
        first = asyncio.create_task(batcher.submit(0, 20))  # an empty queue takes it, however long
        await asyncio.sleep(0.01)
        try:
            await batcher.submit(1, 1)
        except QueueFullError as err:
            refused = err
        else:
            refused = None
        recorder.release.set()
        answer = await first
        await batcher.stop()
        return refused, answer

    refused, answer = asyncio.run(scenario())
    assert refused is not None and "(20 rows) takes about 2.0 s, over the 1 s deadline" in refused.message
    assert answer == 0
