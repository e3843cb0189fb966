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

from service.metrics import Metrics
from service.model import VaeModel

log = logging.getLogger(__name__)

# A batch function takes the payloads of a batch and returns one result per payload, in order.
BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
_STOP: Any = object()  # put on the queue by stop(): the model thread ends


class QueueFullError(RuntimeError):
    """The batcher's queue is at VAE_QUEUE_MAX; the caller should answer 503 with Retry-After."""


class ShuttingDownError(RuntimeError):
    """The batcher stopped before the request was served."""


@dataclass
class _Item:
    payload: Any
    size: int  # images this request adds to a batch
    future: asyncio.Future  # set on the event loop only
    enqueued: float  # time.perf_counter()


class Batcher:
    def __init__(self, name: str, batch_fn: BatchFn, *, max_size: int, max_delay_s: float, queue_max: int,
                 metrics: Metrics, same_batch: Callable[[Any, Any], bool] | None = None):
        """same_batch(first, other): whether a payload may join the batch of `first` (default: any may)."""
        # Bad settings fail here, when the app starts, not at the first request.
        if max_size < 1:
            raise ValueError(f"batch max size must be >= 1, got {max_size}")
        if max_delay_s < 0:
            raise ValueError(f"batch max delay must be >= 0, got {max_delay_s}")
        if queue_max < 1:
            raise ValueError(f"queue max must be >= 1, got {queue_max}")
        self.name = name
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._batch_fn = batch_fn
        self._same_batch = same_batch
        self._queue: queue.Queue[_Item] = queue.Queue(queue_max)  # and _STOP
        self._carry: _Item | None = None  # an item that did not fit into the previous batch (model thread only)
        self._current: list[_Item] = []  # the batch in the model call, so that stop() can fail it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._batch_size = metrics.batch_size.labels(name)
        self._queue_wait = metrics.queue_wait.labels(name)
        self._queue_depth = metrics.queue_depth.labels(name)
        self._rejected = metrics.rejected.labels(name)
        self._inference = metrics.inference.labels(name)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"model-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self, timeout_s: float = 30) -> None:
        """Fail what is queued and in the model call, then wait (up to timeout_s) for the call to end."""
        self._stopped = True  # later submits fail at once
        pending = [*self._current] + ([self._carry] if self._carry else [])
        while True:  # not `while not empty()`: the model thread may take the last item between the two calls
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._queue_depth.set(0)
        _fail([item for item in pending if item is not _STOP], ShuttingDownError(f"{self.name} batcher stopped"))
        if self._thread is not None:
            self._queue.put(_STOP)  # there is room: only this event loop adds items, and the queue was just emptied
            await asyncio.to_thread(self._thread.join, timeout_s)

    async def submit(self, payload: Any, size: int) -> Any:
        """Queue one request of `size` images and wait for its own share of a batch's result."""
        if self._stopped:
            raise ShuttingDownError(f"{self.name} batcher stopped")
        item = _Item(payload, size, self._loop.create_future(), time.perf_counter())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._rejected.inc()
            raise QueueFullError(f"{self.name} queue is full ({self._queue.maxsize} requests waiting)") from None
        self._queue_depth.set(self._queue.qsize())
        return await item.future

    def _run(self) -> None:
        """The model thread: collect a batch, call the model, hand the results to the event loop; until stop()."""
        while (batch := self._collect()) is not None:
            # Callers that went away are not computed. done() is read off the loop's thread: at worst a caller that
            # is cancelled right now is computed for nothing.
            self._current = [item for item in batch if not item.future.done()]
            if not self._current:
                continue
            try:
                results = self._call(self._current)
            except Exception as err:  # keep serving: every caller of the batch gets the error
                log.exception("%s batch of %d requests failed", self.name, len(self._current))
                outcome = (_fail, self._current, err)
            else:
                outcome = (_settle, self._current, results)
            self._current = []
            try:
                self._loop.call_soon_threadsafe(*outcome)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                return

    def _collect(self) -> list[_Item] | None:
        """Take a first item, then what is queued, until the batch is full. If the model was idle (the first item had
        to be waited for), wait for company while requests keep arriving: after each event-loop turn that added
        some, up to max_delay after the first. A lone request waits one loop turn (about 0.1 ms)."""
        first, self._carry = self._carry, None
        idle = False
        if first is None:
            try:
                first = self._queue.get_nowait()
            except queue.Empty:
                first, idle = self._queue.get(), True
        if first is _STOP:
            return None
        batch, size = [first], first.size
        deadline = first.enqueued + self.max_delay_s
        while size < self.max_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if not (idle and self._loop_turn(deadline - time.perf_counter())) or self._queue.empty():
                    break
                continue
            if not self._joins(first, item) or size + item.size > self.max_size:
                self._carry = item
                break
            batch.append(item)
            size += item.size
        self._queue_depth.set(self._queue.qsize())
        return batch

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

    def _call(self, batch: list[_Item]) -> Sequence[Any]:
        now = time.perf_counter()
        for item in batch:
            self._queue_wait.observe(now - item.enqueued)
        self._batch_size.observe(sum(item.size for item in batch))
        with self._inference.time():
            results = self._batch_fn([item.payload for item in batch])
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
    def for_model(cls, model: VaeModel, *, max_size: int, max_delay_s: float, queue_max: int,
                  metrics: Metrics) -> "Batchers":
        def batcher(name: str, batch_fn: BatchFn, **options) -> Batcher:
            return Batcher(name, batch_fn, max_size=max_size, max_delay_s=max_delay_s, queue_max=queue_max,
                           metrics=metrics, **options)

        buckets = bucket_sizes(max_size)
        return cls(encode=batcher("encode", stacked(model.encode, buckets)),
                   decode=batcher("decode", stacked(model.decode, buckets)),
                   reconstruct=batcher("reconstruct", stacked(model.reconstruct, buckets)),
                   sample=batcher("sample", shared(model.sample), same_batch=operator.eq),
                   score=batcher("score", keyed(lambda images, seeds, k: model.score(images, k, seeds)),
                                 same_batch=same_key) if model.has_signature("score") else None)

    def all(self) -> tuple[Batcher, ...]:
        return tuple(b for b in (self.encode, self.decode, self.reconstruct, self.sample, self.score) if b is not None)
