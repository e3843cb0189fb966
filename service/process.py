"""Process-wide tuning for the long-running server, installed once by `python -m service` (not by library classes:
tests and embedders that build the app keep Python's defaults).

- GIL switch interval: the model threads need the GIL a few times per call, and a busy event loop keeps it for up to
  the interval each time. With Python's 5 ms, concurrency 64 gave 4,606 req/s against 4,758 at 0.2 ms.
- The garbage collector: TensorFlow leaves ~350k long-lived Python objects, and a full collection walks them all in
  0.2-0.5 s, stalling every request in flight. Frozen after each model load, they are out of the collector's sight;
  requests make almost no reference cycles, yet at the default threshold (700) young collections took about 10 us
  per request at concurrency 64. An unloaded version's objects are collected once, then the heap is trimmed."""

import ctypes
import gc
import sys
from dataclasses import dataclass


@dataclass
class ProcessTuning:
    gil_switch_interval_ms: float

    def install(self) -> None:
        sys.setswitchinterval(self.gil_switch_interval_ms / 1000)
        gc.set_threshold(20_000)

    @staticmethod
    def after_load() -> None:
        """A model version is loaded and warmed up: take its objects out of the collector's sight."""
        gc.collect()
        gc.freeze()

    @staticmethod
    def after_unload() -> None:
        """A version was dropped: collect its (frozen) objects in one full collection, then hand the freed heap back
        to the OS (glibc keeps it otherwise: a few MB per version)."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
