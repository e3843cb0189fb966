"""Quiet, honest TensorFlow start-up logs: call quiet_tensorflow_logs() before TensorFlow is imported.

TensorFlow's C++ code writes to file descriptor 2 directly, some of it (absl's log lines before its logging is set
up) whatever TF_CPP_MIN_LOG_LEVEL says. Two filters:

- by level: TF_CPP_MIN_LOG_LEVEL, 1 unless already set (no INFO lines; TensorFlow's warnings and errors stay);
- by message: the few lines listed in NOISE, which only say that this machine has no NVIDIA driver (the service
  and training log "no GPU found, running on CPU" instead) or report a graph optimisation TensorFlow skipped.
  Every other line, ERROR or not, passes. TF_CPP_MIN_LOG_LEVEL=0 turns this filter off too: everything is shown.

The message filter is a small child process between fd 2 and the real stderr, not a thread: if TensorFlow aborts
the process, what it wrote last still reaches the terminal (the child reads until the pipe closes).
Stdlib only, in contract/ because both sides (and both Docker images) use it.
"""

import os
import subprocess
import sys

_children = []  # the filter process, referenced for the life of this one

NOISE = (
    # absl, before TensorFlow sets up its logging; says nothing by itself.
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    # No NVIDIA driver library on this machine (error 303: libcuda could not be loaded): the CPU is used.
    "cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    # Grappler's remapper could not fuse some ops of a training graph and left them unfused (seen during training).
    "remapper failed: INVALID_ARGUMENT",
)

_FILTER = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; this process ends when the pipe closes
noise = sys.argv[1:]
for line in sys.stdin.buffer:
    if not any(n.encode() in line for n in noise):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def quiet_tensorflow_logs() -> None:
    """TF_CPP_MIN_LOG_LEVEL=1 unless set, and the NOISE lines dropped from stderr unless it is set to 0."""
    if os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1") == "0":
        return
    sys.stderr.flush()
    child = subprocess.Popen([sys.executable, "-c", _FILTER, *NOISE], stdin=subprocess.PIPE, stdout=sys.stderr,
                             close_fds=True)
    os.dup2(child.stdin.fileno(), 2)  # fd 2 (C++ and Python alike) now feeds the filter
    child.stdin.close()
    _children.append(child)
