"""TensorFlow's INFO lines are off by default; real errors and a crash's last words always reach stderr, since no
process rewrites it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # starts other processes

# Quiets the logs, imports TensorFlow and runs an op (TensorFlow logs at INFO while it sets up), writes a line like a
# real TensorFlow error, then dies without flushing or cleaning up.
SCRIPT = r"""
import os, sys
from contract.tf_logs import quiet_tensorflow_logs
quiet_tensorflow_logs()
import tensorflow as tf
print("LEVEL", os.environ["TF_CPP_MIN_LOG_LEVEL"], float(tf.reduce_sum(tf.ones(3))), flush=True)
os.write(2, b"E0000 00:00:1.0 1 some_op.cc:12] a real error: INVALID_ARGUMENT: shapes differ\n")
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


def test_default_level_is_1_and_real_errors_and_last_words_show():
    stdout, stderr = _run()
    assert stdout.startswith("LEVEL 1 3.0")
    assert "a real error: INVALID_ARGUMENT" in stderr
    assert "last words before an abort" in stderr


def test_a_level_set_by_the_user_is_kept():
    stdout, stderr = _run(TF_CPP_MIN_LOG_LEVEL="3")
    assert stdout.startswith("LEVEL 3 3.0") and "last words before an abort" in stderr
