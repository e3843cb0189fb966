"""TensorFlow's start-up noise is filtered by level and by message; real errors and a crash's last words are not."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A process that quiets the logs, imports TensorFlow and looks for a GPU (the cuInit line comes from that), writes
# a line like a real TensorFlow error and one of the filtered messages, then dies without flushing or cleaning up.
SCRIPT = r"""
import os, sys
from contract.tf_logs import quiet_tensorflow_logs
quiet_tensorflow_logs()
import tensorflow as tf
print("GPUS", len(tf.config.list_physical_devices("GPU")), flush=True)
os.write(2, b"E0000 00:00:1.0 1 some_op.cc:12] a real error: INVALID_ARGUMENT: shapes differ\n")
os.write(2, b"E0000 00:00:1.0 1 meta_optimizer.cc:966] remapper failed: INVALID_ARGUMENT: Mutation::Apply error: x\n")
os.write(2, b"last words before an abort\n")
os._exit(134)
"""


def _run(**env_overrides):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(REPO), **env_overrides)
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 134
    return out.stdout, out.stderr


def test_default_level_drops_the_no_gpu_noise_and_keeps_real_errors():
    stdout, stderr = _run()
    assert "a real error: INVALID_ARGUMENT" in stderr
    assert "last words before an abort" in stderr  # the filter is a process: it outlives a crash
    for noise in ("cuInit", "Could not find cuda drivers", "absl::InitializeLog", "remapper failed", "I0000"):
        assert noise not in stderr, stderr


def test_a_level_set_by_the_user_is_kept_with_the_message_filter():
    _, stderr = _run(TF_CPP_MIN_LOG_LEVEL="2")
    assert "a real error" in stderr and "remapper failed" not in stderr and "cuInit" not in stderr


def test_level_0_turns_both_filters_off():
    stdout, stderr = _run(TF_CPP_MIN_LOG_LEVEL="0")
    assert "remapper failed" in stderr and "a real error" in stderr
    if stdout.startswith("GPUS 0"):  # a machine without an NVIDIA driver says so, at length
        assert "Could not find cuda drivers" in stderr
