"""TensorFlow's log level: call quiet_tensorflow_logs() before TensorFlow is imported.

TF_CPP_MIN_LOG_LEVEL=1 unless already set: TensorFlow's INFO lines are off, its warnings and errors stay. Nothing
rewrites the process's stderr, so a real error and a crash's last words always show. The few informational lines
TensorFlow writes before its logging is set up (oneDNN's custom operations, a missing CUDA driver) remain; the service
and training each log one line saying whether they run on a GPU. Stdlib only: both sides (and both images) use it."""

import os


def quiet_tensorflow_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
