"""Dynamic batching: one bounded queue and one model thread per signature, merging concurrent requests into one model
call.

The model thread collects its own batches: when a call ends it starts the next one at once from what queued up
meanwhile. Collecting on the event loop instead cost about 1 ms per batch under load (the loop first had to finish
its turn, then hand the batch to a thread), an eighth of the model's time."""

import asyncio
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.serving.errors import DeadlineExceededError, QueueFullError, ShuttingDownError
from service.serving.metrics import Metrics
from service.serving.model import VaeModel

log = logging.getLogger(__name__)

# A batch function takes the payloads of a batch and returns one result per payload, in order.
BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
_STOP: Any = object()  # put on the queue by stop(): the model thread ends
# Batches are cut to a padded size (Batcher's trim_to) only from this many images up. A model call's fixed cost is
# worth about 2 images (encode here: 1.1 ms at batch 1, 11.7 ms at 30), and below 16 the padded sizes are at most 4
# apart: if the rest of a cut batch had to run as a call of its own (a few clients, in lockstep), the cut would cost
# more than the padding it saves.
TRIM_FROM = 16


@dataclass
class _Item:
    payload: Any
    size: int  # rows this request adds to a batch, in the signature's unit (decodes for score)
    future: asyncio.Future  # set on the event loop only
    enqueued: float  # time.perf_counter()


class Batcher:
    """Each piece of state has one owner. The event loop: `_stopped`, `_waiting` (the futures of unanswered requests)
    and every future's result. The model thread: `_carry` and the batch in its model call. The queue is the only thing
    both touch. stop() therefore fails what is unanswered from the loop's own records and asks the thread to end with
    a sentinel on the queue, never reading the thread's state."""

    def __init__(self, name: str, batch_fn: BatchFn, *, max_size: int, max_delay_s: float, queue_max: int,
                 metrics: Metrics, version: str = "", deadline_s: float = float("inf"),
                 same_batch: Callable[[Any, Any], bool] | None = None, warm: Callable[[int], Any] | None = None,
                 ready_size: int | None = None, trim_to: Sequence[int] = ()):
        """same_batch(first, other): whether a payload may join the batch of `first` (default: any may).
        trim_to: the sizes the batch function pads to. When the model is busy (requests were waiting as the last call
        ended), a batch of TRIM_FROM images or more of another size is cut to its longest prefix of requests that
        fills one of them exactly (if that keeps at least half of its images); the rest opens the next call, which
        starts at once. Padding rows cost as much as images, so a saturated model computes images only, as Triton's
        preferred batch sizes do. A batch formed while the model was idle is not cut. The cut requests wait outside
        the queue: up to half a batch beyond VAE_QUEUE_MAX (the queue depth gauge counts them).
        deadline_s: a request that waited longer in the queue is failed with DeadlineExceededError, not computed; one
        whose queued work (rows ahead of it and its own, times the recent model time per row) would take longer is
        refused at once with QueueFullError (503 and Retry-After, rather than a 504 after the wait).
        warm(size), ready_size: the padded sizes up to ready_size were warmed before the version became ready; the
        model thread warms the larger ones (bucket_sizes(max_size)) itself, one between batches or all while idle,
        and merges batches only up to the largest size warmed so far, so every call runs at a warmed size."""
        # Bad settings fail here, when the app starts, not at the first request.
        if max_size < 1:
            raise ValueError(f"batch max size must be >= 1, got {max_size}")
        if max_delay_s < 0:
            raise ValueError(f"batch max delay must be >= 0, got {max_delay_s}")
        if queue_max < 1:
            raise ValueError(f"queue max must be >= 1, got {queue_max}")
        if deadline_s <= 0:
            raise ValueError(f"queue deadline must be > 0, got {deadline_s}")
        self.name = name
        self.version = version
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self.deadline_s = deadline_s
        self._batch_fn = batch_fn
        self._same_batch = same_batch
        self._queue: queue.Queue[_Item] = queue.Queue(queue_max)  # and _STOP
        self._carry: list[_Item] = []  # model thread only: items taken from the queue that the previous batch left
        self.trim_to = frozenset(trim_to)
        self._warm = warm
        growing = warm is not None and ready_size is not None and ready_size < max_size
        # model thread only: the largest batch merged now, and the padded sizes still to warm before raising it
        # (the largest padded size within ready_size: those are the sizes warmed before ready)
        self._limit = max(size for size in bucket_sizes(max_size) if size <= ready_size) if growing else max_size
        self._to_warm = [size for size in bucket_sizes(max_size) if size > self._limit] if growing else []
        self._waiting: set[asyncio.Future] = set()  # event loop only
        self._queued_rows = 0  # event loop only: rows submitted and not answered yet
        # Model thread writes, event loop reads (a float, replaced whole): the recent model time per row, from which
        # submit() tells how long the queued work will take.
        self._row_seconds = 0.0
        self._stopped = False  # event loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._metrics = metrics
        self._batch_size = metrics.batch_size.labels(name, version)
        self._queue_wait = metrics.queue_wait.labels(name, version)
        self._queue_depth = metrics.queue_depth.labels(name, version)
        self._rejected = metrics.rejected.labels(name, version)
        self._expired = metrics.expired.labels(name, version)
        self._inference = metrics.inference.labels(name, version)

    def seed(self, row_seconds: float) -> None:
        """The model time per row measured before any call of this batcher (the version's warm-up), so that
        admission by work holds from the first request on; its own calls refine it."""
        if not self._row_seconds and row_seconds > 0:
            self._row_seconds = row_seconds

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"model-{self.name}-v{self.version}", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """No request submitted and unanswered (event loop only)."""
        return not self._waiting

    async def stop(self, timeout_s: float = 30) -> None:
        """Fail every unanswered request at once, then end the model thread after its current call (waiting up to
        timeout_s). Later submits fail at once."""
        self._stopped = True
        for future in self._waiting:
            if not future.done():
                future.set_exception(ShuttingDownError(f"{self.name} batcher stopped; retry later"))
        if self._thread is not None:
            await asyncio.to_thread(self._end_thread, timeout_s)
        self._queue_depth.set(0)
        try:
            self._metrics.queue_depth.remove(self.name, self.version)  # a stopped version's gauge is gone, not 0
        except KeyError:
            pass

    def _end_thread(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:  # no submit adds items any more, so the model thread makes room
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("%s v%s model thread still busy after %.0f s", self.name, self.version, timeout_s)
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    async def submit(self, payload: Any, size: int) -> Any:
        """Queue one request of `size` rows and wait for its own share of a batch's result."""
        if self._stopped:
            raise ShuttingDownError(f"{self.name} batcher stopped; retry later")
        ahead = self._queued_rows
        backlog_s = ahead * self._row_seconds
        # Admission by work: behind queued work that would keep it waiting past its deadline (which counts the wait,
        # not its own call), refuse it now. An empty queue always takes it, which keeps the time per row current.
        if backlog_s > self.deadline_s:
            self._rejected.inc()
            raise QueueFullError(f"{self.name}: the work queued ahead ({ahead} rows) takes about {backlog_s:.1f} s, "
                                 f"over the {self.deadline_s:g} s deadline (VAE_QUEUE_DEADLINE_MS); retry later")
        future = self._loop.create_future()
        try:
            self._queue.put_nowait(_Item(payload, size, future, time.perf_counter()))
        except queue.Full:
            self._rejected.inc()
            raise QueueFullError(f"{self.name} queue is full ({self._queue.maxsize} requests waiting); "
                                 "retry later") from None
        self._queue_depth.set(self._queue.qsize())
        self._waiting.add(future)
        self._queued_rows += size
        try:
            return await future
        finally:
            self._waiting.discard(future)
            self._queued_rows -= size

    def _run(self) -> None:
        """The model thread: collect a batch, call the model, hand the results to the event loop; until _STOP."""
        while (batch := self._collect()) is not None:
            self._warm_next()  # one size per batch under load: each delays the queue by one call at that size
            # Callers that went away, or were failed by stop(), are not computed; nor are those queued past the
            # deadline. done() is read off the loop's thread: at worst a caller cancelled right now is computed
            # for nothing.
            now = time.perf_counter()
            live, expired = [], []
            for item in batch:
                if not item.future.done():
                    (live if now - item.enqueued <= self.deadline_s else expired).append(item)
            outcomes = []
            if expired:
                self._expired.inc(len(expired))
                outcomes.append((_fail, expired, DeadlineExceededError(
                    f"{self.name}: waited in the queue longer than {self.deadline_s * 1000:.0f} ms; retry later")))
            if live:
                while self._to_warm and sum(item.size for item in live) > self._limit:
                    self._warm_next()  # a request larger than the batches merged so far: its padded size first
                try:
                    results = self._call(live, now)
                except Exception as err:  # keep serving: every caller of the batch gets the error
                    log.exception("%s batch of %d requests failed", self.name, len(live))
                    outcomes.append((_fail, live, err))
                else:
                    outcomes.append((_settle, live, results))
            try:
                for outcome in outcomes:
                    self._loop.call_soon_threadsafe(*outcome)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                return
        self._carry = []
        while True:  # drop what is left (stop() failed those requests already)
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def _collect(self) -> list[_Item] | None:
        """Take a first item (the oldest carried one, else the queue's), then what is queued, until the batch is full.
        If the model was idle (the first item had to be waited for), wait for company while requests keep arriving:
        after each event-loop turn that added some, up to max_delay after the first. A lone request waits one loop
        turn (about 0.1 ms). None: stop."""
        carried, self._carry = self._carry, []
        idle = False
        if not carried:
            while self._to_warm and self._queue.empty():
                self._warm_next()  # idle: warm the larger sizes now
            try:
                carried = [self._queue.get_nowait()]
            except queue.Empty:
                carried, idle = [self._queue.get()], True
        first = carried[0]
        if first is _STOP:
            return None
        batch, size = [], 0
        for item in carried:  # in order: once one is left for later, so is every item after it
            if batch and (self._carry or not self._fits(first, item, size)):
                self._carry.append(item)
            else:
                batch.append(item)
                size += item.size
        deadline = first.enqueued + self.max_delay_s
        while not self._carry and size < self._limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if not (idle and self._loop_turn(deadline - time.perf_counter())) or self._queue.empty():
                    break
                continue
            if not self._fits(first, item, size):
                self._carry.append(item)
                break
            batch.append(item)
            size += item.size
        if not idle and self.trim_to:
            self._trim(batch)
        self._queue_depth.set(self._queue.qsize() + len(self._carry))
        return batch

    def _fits(self, first: _Item, item: _Item, size: int) -> bool:
        return self._joins(first, item) and size + item.size <= self._limit

    def _trim(self, batch: list[_Item]) -> None:
        """Cut `batch` (in place) to its longest prefix, from the oldest request, whose images fill a padded size
        exactly, if those are at least half of its images; the rest goes first into the next batch. Only from
        TRIM_FROM images up, and counting only requests still waiting (the others are not computed)."""
        rows = [0 if item.future.done() else item.size for item in batch]  # done(): read off the loop, at worst stale
        size = sum(rows)
        if size < TRIM_FROM or size in self.trim_to:
            return
        keep = kept = filled = 0
        for count, item_rows in enumerate(rows, 1):
            filled += item_rows
            if filled in self.trim_to:
                keep, kept = count, filled
        if keep and kept * 2 >= size:
            self._carry[:0] = batch[keep:]
            del batch[keep:]

    def _warm_next(self) -> None:
        """Warm the next larger padded size and raise the batch limit to it (model thread only). A failure stops the
        growth (the version already passed its warm-up at the smaller sizes): batches stay at the sizes warmed."""
        if not self._to_warm:
            return
        size = self._to_warm.pop(0)
        try:
            self._warm(size)
        except Exception:
            log.exception("%s v%s warm-up at batch size %d failed; batches stay at %d", self.name, self.version, size,
                          self._limit)
            self._to_warm = []
            return
        self._limit = size
        if not self._to_warm:
            log.info("%s v%s warmed up to batch size %d", self.name, self.version, size)

    def _joins(self, first: _Item, item: _Item) -> bool:
        if item is _STOP:
            return False
        try:
            return self._same_batch is None or bool(self._same_batch(first.payload, item.payload))
        except Exception:  # a bug in same_batch must not end the model thread: the item goes in a batch of its own
            log.exception("%s same_batch failed; the request goes in a batch of its own", self.name)
            return False

    def _loop_turn(self, timeout_s: float) -> bool:
        """Wait (up to timeout_s) until the event loop has run what was ready: requests it is parsing submit then."""
        if timeout_s <= 0:
            return False
        turned = threading.Event()
        try:
            self._loop.call_soon_threadsafe(turned.set)
        except RuntimeError:  # the event loop is closed
            return False
        return turned.wait(timeout_s)

    def _call(self, batch: list[_Item], now: float) -> Sequence[Any]:
        for item in batch:
            self._queue_wait.observe(now - item.enqueued)
        rows = sum(item.size for item in batch)
        self._batch_size.observe(rows)
        started = time.perf_counter()
        results = self._batch_fn([item.payload for item in batch])
        elapsed = time.perf_counter() - started
        self._inference.observe(elapsed)
        # Per row at the batch sizes the load brings: the moving average follows a change of load within ~5 calls.
        per_row = elapsed / rows
        self._row_seconds = per_row if not self._row_seconds else 0.8 * self._row_seconds + 0.2 * per_row
        if len(results) != len(batch):
            raise RuntimeError(f"{self.name} batch function gave {len(results)} results for {len(batch)} requests")
        return results


def _settle(items: list[_Item], results: Sequence[Any]) -> None:
    for item, result in zip(items, results, strict=True):
        if not item.future.done():
            item.future.set_result(result)


def _fail(items: list[_Item], err: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(err)


def bucket_sizes(max_size: int) -> list[int]:
    """The batch sizes model calls are zero-padded to: 1, 2, 3, 4, 6, 8, 12, 16, then quarter-octave steps (20, 24,
    28, 32, 40, ...) up to max_size, so padding adds at most a third of the rows, and under a quarter above 16.
    oneDNN builds kernels per input shape, slowly (about 3x the call itself), and caches a bounded number of them:
    a few sizes, warmed up at start, keep every call on cached kernels."""
    sizes = set()
    for k in range(max_size.bit_length()):
        sizes.update(step * 2**k // 4 for step in ((4, 5, 6, 7) if k >= 4 else (4, 6)))
    return sorted(size for size in sizes if size < max_size) + [max_size]


def ready_sizes(max_size: int, ready_size: int) -> list[int]:
    """The padded sizes warmed before a version becomes ready: those up to ready_size (the batchers warm the rest)."""
    return [size for size in bucket_sizes(max_size) if size <= ready_size]


def stacked(fn: Callable[[np.ndarray], dict[str, np.ndarray]], buckets: Sequence[int] = ()) -> BatchFn:
    """Batch function for array payloads: one call on the concatenation, zero-padded up to the next of `buckets`,
    outputs split back by each payload's rows."""

    def run(payloads: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        inputs = payloads[0] if len(payloads) == 1 else np.concatenate(payloads)
        rows = len(inputs)
        padded = next((size for size in buckets if size >= rows), rows)
        if padded > rows:
            inputs = np.concatenate([inputs, np.zeros((padded - rows, *inputs.shape[1:]), inputs.dtype)])
        outputs = fn(inputs)
        for name, array in outputs.items():
            if len(array) != padded:
                raise RuntimeError(f"output {name} has {len(array)} rows for {padded} inputs")
        bounds = np.cumsum([0] + [len(p) for p in payloads])
        return [{name: array[start:stop] for name, array in outputs.items()}
                for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]

    return run


def shared(fn: Callable[..., dict[str, np.ndarray]]) -> BatchFn:
    """Batch function for a batch of identical argument tuples (see `same_batch`): one call, its result for each.
    The sample signature takes one seed per call, so only requests for the same (n, seed) can share a call."""

    def run(payloads: Sequence[tuple]) -> list[dict[str, np.ndarray]]:
        if any(args != payloads[0] for args in payloads):
            raise RuntimeError(f"shared batch function got different arguments: {sorted(set(payloads))}")
        return [fn(*payloads[0])] * len(payloads)

    return run


def keyed(fn: Callable[..., dict[str, np.ndarray]]) -> BatchFn:
    """Batch function for payloads (key, *arrays) where only payloads with the same key share a call (see
    `same_key`): fn(*concatenated arrays, *key) once, outputs split back by each payload's rows. No padding: used
    for the score signature, whose cost is images x k decodes, so a padded row is never cheap."""

    def run(payloads: Sequence[tuple]) -> list[dict[str, np.ndarray]]:
        arrays = [np.concatenate(parts) for parts in zip(*(payload[1:] for payload in payloads), strict=True)]
        outputs = fn(*arrays, *payloads[0][0])
        bounds = np.cumsum([0] + [len(payload[1]) for payload in payloads])
        return [{name: array[start:stop] for name, array in outputs.items()}
                for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]

    return run


def same_key(first: tuple, other: tuple) -> bool:
    return first[0] == other[0]


@dataclass(frozen=True)
class Batchers:
    encode: Batcher
    decode: Batcher
    reconstruct: Batcher
    sample: Batcher
    score: Batcher | None = None  # models of schema 2 and up

    @classmethod
    def for_model(cls, model: VaeModel, *, max_size: int, max_delay_s: float, queue_max: int, metrics: Metrics,
                  deadline_s: float = float("inf"), ready_size: int | None = None,
                  score_max_samples: int | None = None, trim: bool = True) -> "Batchers":
        """The batchers of one model version: each calls that version's model only, so a version's requests can never
        reach another version's model (there is no model reference to swap). ready_size: the padded batch sizes up to
        it are warmed before the version is ready (model.warm_up(ready_sizes(...))); the padded signatures' model
        threads warm the larger ones (None: all are warmed before). score_max_samples: the most k x images one score
        call may hold (score requests are sized by k x images, so merged requests stay within it; None: max_size).
        trim: a busy model's padded batches are cut to the padded sizes (Batcher's trim_to)."""
        def batcher(name: str, batch_fn: BatchFn, size: int = max_size, **options) -> Batcher:
            return Batcher(name, batch_fn, max_size=size, max_delay_s=max_delay_s, queue_max=queue_max,
                           metrics=metrics, version=str(model.version), deadline_s=deadline_s, **options)

        buckets = bucket_sizes(max_size)
        image_shape = model.metadata["image_shape"]

        def padded(name: str, fn: Callable[[np.ndarray], dict], row_shape: Sequence[int]) -> Batcher:
            return batcher(name, stacked(fn, buckets), ready_size=ready_size, trim_to=buckets if trim else (),
                           warm=lambda size: fn(np.zeros((size, *row_shape), np.float32)))

        return cls(encode=padded("encode", model.encode, image_shape),
                   decode=padded("decode", model.decode, (model.latent_size,)),
                   reconstruct=padded("reconstruct", model.reconstruct, image_shape),
                   sample=batcher("sample", shared(model.sample), same_batch=operator.eq),
                   score=batcher("score", keyed(lambda images, seeds, k: model.score(images, k, seeds)),
                                 score_max_samples or max_size, same_batch=same_key)
                   if model.has_signature("score") else None)

    def all(self) -> tuple[Batcher, ...]:
        return tuple(b for b in (self.encode, self.decode, self.reconstruct, self.sample, self.score) if b is not None)

    def seed(self, row_seconds: dict[str, float]) -> None:
        """Each batcher's model time per row, by signature name (VaeModel.warm_up measures them)."""
        for batcher in self.all():
            if batcher.name in row_seconds:
                batcher.seed(row_seconds[batcher.name])

    def start(self) -> None:
        for batcher in self.all():
            batcher.start()

    async def stop(self, timeout_s: float = 30) -> None:
        await asyncio.gather(*(batcher.stop(timeout_s) for batcher in self.all()))

    @property
    def idle(self) -> bool:
        return all(batcher.idle for batcher in self.all())
