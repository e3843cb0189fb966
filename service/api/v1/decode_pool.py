"""Upload decoding in worker processes that the OS caps, shared fairly between requests.

- Workers are `python -m service.api.v1.decode_pool` processes: spawned, never forked (the service has TensorFlow
  loaded and threads running), importing Pillow, numpy and the v1 image modules only. Each caps its own address
  space (RLIMIT_AS: its size once imported plus `memory_mb`) and, file by file, its CPU time (RLIMIT_CPU: the kernel
  ends it with SIGXCPU `cpu_s` seconds into a file). The service kills a worker whose file passes `timeout_s` of
  wall-clock time, or whose request was cancelled (the client left), and starts another. These are the backstop for
  what service.api.v1.decoding's header checks do not foresee: any file that breaks one is a 4xx naming the bound.
- Fairness: a request has at most one worker at a time, and a free worker goes to the waiting request whose worker
  time so far plus its next file's estimated time is least (ties: the first to ask). The estimate is read from the
  file's header without Pillow (decoding.estimated_seconds: the declared pixels; the costliest guess for a header it
  cannot read quickly). A worker takes a request's files in batches (one file, or consecutive small files up to
  ~50 ms of estimated work) and answers file by file; between batches the request keeps it unless a request with a
  smaller key waits. A small upload therefore waits for at most one running batch per worker to end, however many
  files other requests have queued and however many such requests arrived just before it (bench/abuse.py's
  fairness section measures it).
- Messages are a 4-byte length, a JSON header and raw bytes (the batch's files, or one file's (28, 28) float32
  pixels): nothing the worker sends is unpickled by the service.

The pool is thread-based on the service's side (a thread per held worker, blocked on its pipe), so it serves any
event loop; a worker exits when its pipe closes, so none outlives the service."""

import asyncio
import atexit
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.api.v1.decoding import DecodeLimits, ImageError, decode_gray, estimated_seconds
from service.api.v1.preprocess import preprocess
from service.settings import Settings

_LENGTH = struct.Struct(">I")
_REPO_ROOT = str(Path(__file__).resolve().parents[3])
_START_TIMEOUT_S = 60.0
# Worker environment: one BLAS thread; large buffers mmapped (and so returned to the OS when freed); two malloc arenas.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_TRIM_THRESHOLD_": "1048576"}


@dataclass(frozen=True)
class PoolConfig:
    """The settings decode_workers, decode_memory_mb, decode_cpu_s and decode_timeout_s (see pool_for)."""

    workers: int = 2
    memory_mb: int = 192  # address space a worker may add to its own after its imports
    cpu_s: float = 2.0  # CPU time per file
    timeout_s: float = 5.0  # wall-clock time per file


class DecodeFailure(RuntimeError):
    """A worker crashed on a file for a reason other than a bound (a bug, not the file's fault): a 500."""


@dataclass
class _Job:
    """A batch of one request's files: `header` holds the options and each file's name and size, `data` the files'
    bytes one after the other. The worker answers file by file and stops at the first it cannot decode."""

    header: dict[str, Any]
    data: list[bytes]
    cancelled: bool = False

    def name(self, index: int) -> str:
        return self.header["files"][index]["name"]


class _Worker:
    """One worker process, driven by blocking calls from one thread at a time (the fair queue hands it out)."""

    def __init__(self, config: PoolConfig):
        self.config = config
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()  # guards _process and _job against cancel() from the event loop
        self._starting = threading.Lock()  # held from the spawn to the worker's "ready"
        self._job: _Job | None = None
        self._closed = False  # kill() was called: a process spawned after it is killed, not published

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        with self._lock:
            return self._job is not None

    def start(self) -> None:
        """Starts the process if none is running, and waits for it to say it is ready."""
        with self._starting:
            if self._process is not None and self._process.poll() is None:
                return
            if self._process is not None:  # an ended worker: its pipes are closed now, not at garbage collection
                for pipe in (self._process.stdin, self._process.stdout):
                    with contextlib.suppress(OSError):  # stdin's buffer may still hold a file it never read
                        pipe.close()
            env = {**os.environ, **_WORKER_ENV,
                   "PYTHONPATH": os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")]))}
            process = subprocess.Popen(
                [sys.executable, "-m", "service.api.v1.decode_pool", str(self.config.memory_mb),
                 str(self.config.cpu_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_REPO_ROOT,
                close_fds=True, start_new_session=True)  # its own session: a terminal's Ctrl-C goes to the service
            if _read_frame(process, time.monotonic() + _START_TIMEOUT_S) is None:
                process.kill()
                process.wait()
                raise DecodeFailure("a decode worker did not start")
            with self._lock:
                closed = self._closed
                if not closed:
                    self._process = process
            if closed:  # the pool closed while this worker started
                process.kill()
                process.wait()
                raise DecodeFailure("the decode pool is closed")

    def kill(self) -> None:
        with self._lock:
            self._closed = True
            process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def cancel(self, job: _Job) -> None:
        """Stops `job` if it is still running (its request was cancelled); a later job is left alone."""
        with self._lock:
            job.cancelled = True
            if self._job is not job or self._process is None:
                return
            process = self._process
        process.kill()

    def run(self, job: _Job, answers: list[tuple[dict[str, Any], bytes]]) -> None:
        """Sends the batch and appends the worker's answers, file by file, to `answers` until every file is answered or
        one failed. Raises ImageError for a file that broke a bound of the worker (named: the file being decoded)."""
        self.start()
        with self._lock:
            if job.cancelled:
                raise asyncio.CancelledError
            self._job, process = job, self._process
        try:
            deadline, end = math.inf, len(answers) + len(job.data)
            try:
                _write_frame(process, job.header, job.data)
                while len(answers) < end:
                    deadline = time.monotonic() + self.config.timeout_s  # per file
                    answer = _read_frame(process, deadline)
                    if answer is None:
                        break
                    answers.append(answer)
                    if not answer[0].get("ok"):
                        break
                else:
                    return
            except OSError:  # BrokenPipeError included: the worker ended
                answer = None
            if answer is None:
                self._failed(process, job, len(answers) - (end - len(job.data)), timed_out=time.monotonic() >= deadline)
            if answer[0].get("restart"):  # after a MemoryError a worker's state is not to be trusted
                self.kill()
        finally:
            with self._lock:
                self._job = None

    def _failed(self, process: subprocess.Popen, job: _Job, index: int, timed_out: bool) -> None:
        if timed_out:
            process.kill()
        try:
            code = process.wait(_START_TIMEOUT_S)  # it closed its pipe: it is ending
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        name = job.name(index)
        if job.cancelled:
            raise asyncio.CancelledError
        if timed_out:
            raise ImageError(f"file {name!r} took longer than {self.config.timeout_s:g} s to decode, the limit "
                             f"(VAE_DECODE_TIMEOUT_S)", 422)
        if code == -signal.SIGXCPU:
            raise ImageError(f"file {name!r} took more than {self.config.cpu_s:g} s of CPU time to decode, the limit "
                             f"(VAE_DECODE_CPU_S)", 422)
        if code == -signal.SIGKILL:  # not sent by us: the kernel's OOM killer
            raise ImageError(f"file {name!r} could not be decoded within the decode memory limit of "
                             f"{self.config.memory_mb} MB (VAE_DECODE_MEMORY_MB)", 413)
        if code in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGFPE, -signal.SIGILL):
            raise ImageError(f"file {name!r} could not be decoded: the decoder crashed on it "
                             f"({signal.Signals(-code).name})")
        raise DecodeFailure(f"the decode worker ended with exit code {code} on file {name!r}")


class _FairQueue:
    """Hands free workers to waiting requests, smallest key first (worker time used plus the next file's estimate;
    thread-safe)."""

    def __init__(self, workers: list[_Worker]):
        self._lock = threading.Lock()
        self._idle = list(workers)
        self._waiting: list[tuple[float, int, concurrent.futures.Future]] = []
        self._order = itertools.count()

    def acquire(self, key: float) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._idle:
                future.set_running_or_notify_cancel()
                future.set_result(self._idle.pop())
            else:
                heapq.heappush(self._waiting, (key, next(self._order), future))
        return future

    def release(self, worker: _Worker) -> None:
        with self._lock:
            while self._waiting:
                _, _, future = heapq.heappop(self._waiting)
                if future.set_running_or_notify_cancel():  # False: its request was cancelled while waiting
                    future.set_result(worker)
                    return
            self._idle.append(worker)

    def waiting(self) -> int:
        with self._lock:
            return sum(not future.cancelled() for _, _, future in self._waiting)

    def should_yield(self, key: float) -> bool:
        """Whether a request waits whose key is smaller than `key` (the holder's, were it to ask now)."""
        with self._lock:
            while self._waiting and self._waiting[0][2].cancelled():
                heapq.heappop(self._waiting)
            return bool(self._waiting) and self._waiting[0][0] < key

    def busy(self, total: int) -> int:
        with self._lock:
            return total - len(self._idle)


@dataclass
class _Account:
    """One request's files, its answers so far, the worker time it has used and the batch it is running."""

    files: list[tuple[str, bytes, float]]  # name, bytes, estimated seconds
    header: dict[str, Any]
    answers: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    used_s: float = 0.0
    job: _Job | None = None
    cancelled: bool = False

    def key(self) -> float:
        return self.used_s + self.files[len(self.answers)][2]

    def next_batch(self) -> _Job:
        """The next file, and the ones after it while each is small and together they stay within _BATCH_S."""
        start = end = len(self.answers)
        total_s, total_bytes = 0.0, 0
        while end < len(self.files) and end - start < _BATCH_FILES:
            _, data, estimate_s = self.files[end]
            if end > start and (estimate_s > _SMALL_FILE_S or total_s + estimate_s > _BATCH_S
                                or total_bytes + len(data) > _BATCH_BYTES):
                break
            total_s, total_bytes, end = total_s + estimate_s, total_bytes + len(data), end + 1
        files = self.files[start:end]
        return _Job({**self.header, "files": [{"name": name, "size": len(data)} for name, data, _ in files]},
                    [data for _, data, _ in files])


# Batches: a file estimated under _SMALL_FILE_S goes to the worker with the files after it, up to _BATCH_S of
# estimated work, _BATCH_FILES files or _BATCH_BYTES (one round trip to the worker costs ~0.1-0.4 ms).
_SMALL_FILE_S = 0.005
_BATCH_S = 0.05
_BATCH_FILES = 64
_BATCH_BYTES = 4 * 2**20


class DecodePool:
    """Worker processes decoding uploads; `decode` is the async entry point."""

    def __init__(self, config: PoolConfig = PoolConfig()):
        self.config = config
        self._workers = [_Worker(config) for _ in range(config.workers)]
        self._queue = _FairQueue(self._workers)
        # One thread per running job (at most one per worker) plus as many finishing a respawn after a kill.
        self._threads = concurrent.futures.ThreadPoolExecutor(2 * config.workers, thread_name_prefix="decode-job")
        self._closed = False
        _POOLS.add(self)

    def start(self) -> None:
        """Starts every worker now (in the background) rather than at the first upload."""
        for worker in self._workers:
            self._threads.submit(worker.start)

    def pids(self) -> list[int]:
        """The workers' process ids (a worker not started yet has none)."""
        return [pid for worker in self._workers if (pid := worker.pid) is not None]

    def running_pids(self) -> list[int]:
        """The process ids of the workers decoding a batch now."""
        return [worker.pid for worker in self._workers if worker.running() and worker.pid is not None]

    def busy(self) -> int:
        """Workers handed to a request's file (running it, or restarting after it)."""
        return self._queue.busy(len(self._workers))

    def waiting(self) -> int:
        """Requests waiting for a worker."""
        return self._queue.waiting()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for worker in self._workers:
                worker.kill()
            self._threads.shutdown(wait=False, cancel_futures=True)

    async def decode(self, uploads: list[tuple[str, bytes]], limits: DecodeLimits, invert: bool | None,
                     normalize: bool | None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Each upload as a (28, 28) float32 array in [0, 1], stacked, and what preprocessing did to each; the first
        file that cannot be decoded raises its ImageError (the files after it are not decoded)."""
        header = {"formats": list(limits.formats), "max_pixels": limits.max_pixels, "max_aspect": limits.max_aspect,
                  "max_buffer_bytes": limits.max_buffer_bytes, "max_jpeg_scans": limits.max_jpeg_scans,
                  "max_rle_pixels": limits.max_rle_pixels, "invert": invert, "normalize": normalize,
                  "memory_limit": f"the decode memory limit of {self.config.memory_mb} MB (VAE_DECODE_MEMORY_MB)"}
        account = _Account([(name, data, estimated_seconds(data, limits)) for name, data in uploads], header)
        while len(account.answers) < len(uploads):
            await self._hold(account)
            answer, _ = account.answers[-1]
            if not answer.get("ok"):
                if "status" in answer:
                    raise ImageError(answer["message"], answer["status"])
                name = account.files[len(account.answers) - 1][0]
                raise DecodeFailure(f"decoding file {name!r} failed: {answer.get('crash', 'no detail')}")
        pixels = [np.frombuffer(payload, np.float32).reshape(answer["shape"]) for answer, payload in account.answers]
        return np.stack(pixels), [answer["done"] for answer, _ in account.answers]

    async def _hold(self, account: _Account) -> None:
        """A worker for the request's next batches, until its files are done, one fails or a request with a smaller
        key waits."""
        waiting = self._queue.acquire(account.key())
        if not waiting.done():
            try:
                await asyncio.wrap_future(waiting)
            except asyncio.CancelledError:
                if not waiting.cancel():  # handed a worker as the request was cancelled: give it back
                    waiting.add_done_callback(lambda future: self._queue.release(future.result()))
                raise
        worker = waiting.result()
        running = self._threads.submit(self._run_on, worker, account)
        try:
            await asyncio.wrap_future(running)
        except asyncio.CancelledError:
            account.cancelled = True
            if running.cancel():  # never started
                self._queue.release(worker)
            elif account.job is not None:
                worker.cancel(account.job)  # the client left: stop the decode now
            raise

    def _run_on(self, worker: _Worker, account: _Account) -> None:
        try:
            while not account.cancelled:
                account.job = job = account.next_batch()
                job.cancelled = account.cancelled  # the client may have left since the check above
                started, answered = time.monotonic(), len(account.answers)
                try:
                    worker.run(job, account.answers)
                finally:
                    account.used_s += time.monotonic() - started
                if len(account.answers) == len(account.files) or not account.answers[-1][0].get("ok"):
                    return
                if len(account.answers) == answered or self._queue.should_yield(account.key()):
                    return
        finally:
            account.job = None
            try:
                if not self._closed:
                    worker.start()  # after a kill, the next request should not wait for the restart
            except DecodeFailure:
                pass
            finally:
                self._queue.release(worker)


_POOLS: "weakref.WeakSet[DecodePool]" = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS):
        pool.close()


def pool_for(state: Any, settings: Settings) -> DecodePool:
    """The app's decode pool (app.state.upload_decoder), started at its first upload (the app closes it when it
    stops)."""
    pool = getattr(state, "upload_decoder", None)
    if pool is None:
        config = PoolConfig(workers=settings.decode_workers, memory_mb=settings.decode_memory_mb,
                            cpu_s=settings.decode_cpu_s, timeout_s=settings.decode_timeout_s)
        pool = state.upload_decoder = DecodePool(config)
        pool.start()
    return pool


# ---- the wire: 4-byte length, JSON header, then header["size"] raw bytes ----

def _write_frame(process: subprocess.Popen, header: dict[str, Any], payloads: list[bytes]) -> None:
    text = json.dumps({**header, "size": sum(map(len, payloads))}).encode()
    stream = process.stdin
    stream.write(_LENGTH.pack(len(text)) + text)
    for payload in payloads:
        stream.write(payload)
    stream.flush()


def _read_exact(fd: int, count: int, deadline: float) -> bytes | None:
    chunks, left = [], count
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(process: subprocess.Popen, deadline: float) -> tuple[dict[str, Any], bytes] | None:
    """A frame from the worker, or None if it ended or the deadline passed."""
    fd = process.stdout.fileno()
    length = _read_exact(fd, _LENGTH.size, deadline)
    if length is None:
        return None
    (size,) = _LENGTH.unpack(length)
    if size > 1 << 20:
        return None
    text = _read_exact(fd, size, deadline)
    if text is None:
        return None
    header = json.loads(text)
    if not isinstance(header, dict) or not 0 <= int(header.get("size", 0)) <= 1 << 20:
        return None
    payload = _read_exact(fd, int(header.get("size", 0)), deadline)
    return None if payload is None else (header, payload)


# ---- the worker process ----

def load_image(data: bytes, name: str, *, limits: DecodeLimits, invert: bool | None,
               normalize: bool | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one upload into a (28, 28) float32 array in [0, 1] and what was done to it (see `preprocess`); an
    ImageError names the file, in a request of many."""
    gray = decode_gray(data, name, limits)
    try:
        return preprocess(np.asarray(gray, np.float32) / 255.0, invert, normalize)
    except ImageError as err:
        named = repr(name) in str(err)
        raise ImageError(str(err) if named else f"file {name!r}: {err}", err.status) from None


def _decode_file(options: dict[str, Any], name: str, data: bytes) -> tuple[dict[str, Any], bytes]:
    limits = DecodeLimits(tuple(options["formats"]), options["max_pixels"], options["max_aspect"],
                          options["max_buffer_bytes"], options["max_jpeg_scans"], options["max_rle_pixels"],
                          options["memory_limit"])
    pixels, done = load_image(data, name, limits=limits, invert=options["invert"], normalize=options["normalize"])
    pixels = np.ascontiguousarray(pixels, np.float32)
    return {"ok": True, "shape": list(pixels.shape), "done": done}, pixels.tobytes()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _worker_main(memory_mb: int, cpu_s: float) -> None:
    import resource
    import traceback

    # The protocol runs on the pipes the service gave as stdin and stdout; stray prints from C libraries go to stderr.
    inbox, outbox = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when a worker ends
    import PIL.Image  # noqa: F401  (imported before the address space is measured)

    from service.api.v1 import decoding, preprocess  # noqa: F401

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    size = _vm_size()
    cap = size + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def send(header: dict[str, Any], payload: bytes = b"") -> None:
        text = json.dumps({**header, "size": len(payload)}, default=_json_default).encode()
        outbox.write(_LENGTH.pack(len(text)) + text + payload)
        outbox.flush()

    send({"ready": True, "pid": os.getpid()})
    while True:
        length = inbox.read(_LENGTH.size)
        if len(length) < _LENGTH.size:
            return  # the service closed the pipe
        header = json.loads(inbox.read(_LENGTH.unpack(length)[0]))
        files = [(entry["name"], inbox.read(entry["size"])) for entry in header["files"]]
        for name, data in files:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_s)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
            try:
                answer, payload = _decode_file(header, name, data)
            except ImageError as err:
                answer, payload = {"ok": False, "status": err.status, "message": str(err)}, b""
            except MemoryError:
                answer, payload = {"ok": False, "status": 413, "restart": True,
                                   "message": f"file {name!r} needs more memory to decode than the decode memory "
                                              f"limit of {memory_mb} MB (VAE_DECODE_MEMORY_MB)"}, b""
            except Exception:
                answer, payload = {"ok": False, "crash": traceback.format_exc(limit=8)[-4000:]}, b""
            send(answer, payload)
            if not answer["ok"]:
                break
        del files


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), float(sys.argv[2]))
