"""Each start-up fault ends `python -m service` with a non-zero exit and one error line naming the path and the
problem (no traceback at the default log level).

Two real processes prove the line reaches stderr and the exit code (a model fault, after TensorFlow's import, and the
port in use, before it); the other faults run the CLI's main() in this process (service.__main__.main with its
argv), the same code path, with the same assertions on the line."""

import gc
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.__main__ import main
from service.settings import REPO_ROOT
from tests.ports import free_port


def break_model(model_dir: Path, root: Path, fault: str) -> Path:
    """A copy of the model with one fault; returns the folder to serve."""
    if fault == "missing_folder":
        return root / "no-such-model"
    target = root / fault
    shutil.copytree(model_dir, target)
    metadata = target / "metadata.json"
    if fault == "empty_graph":
        (target / "saved_model.pb").write_bytes(b"")
    elif fault == "corrupt_graph":
        (target / "saved_model.pb").write_bytes(b"\x08\x01garbage that is no protobuf" * 10)
    elif fault == "missing_metadata":
        metadata.unlink()
    elif fault == "invalid_metadata":
        metadata.write_text("{not json")
    elif fault == "contract_mismatch":
        metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "latent_size": 8}))
    elif fault == "missing_variables":
        shutil.rmtree(target / "variables")
    return target


FAULTS = {  # fault -> (what the line names besides the path)
    "missing_folder": "no such folder",
    "empty_graph": "saved_model.pb: the file is empty",
    "corrupt_graph": "TensorFlow cannot load this SavedModel",
    "missing_metadata": "metadata.json is missing",
    "invalid_metadata": "metadata.json is not readable JSON",
    "contract_mismatch": "metadata.json does not match the SavedModel",
    "missing_variables": "variables: missing",
}


def error_lines(stderr: str) -> list[str]:
    """The service's ERROR lines (TensorFlow's own C++ lines, such as a failed CUDA probe, have their own format)."""
    return [line for line in stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\d [\d:,]+ ERROR ", line)]


SUBPROCESS_FAULT = "corrupt_graph"  # TensorFlow's own error, in one line of ours


def run_service(*args: str) -> tuple[int, str]:
    """`python -m service ARGS` in a process of its own: (exit code, stderr)."""
    process = subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=240)
    return process.returncode, process.stderr


@pytest.fixture
def run_main(monkeypatch, capsys):
    """main() of `python -m service ARGS` in this process: (exit code, stderr). main() configures the root logger,
    uvicorn's loggers (uvicorn.Config sets their levels, handlers and propagation), the GIL switch interval and the
    collector's threshold for the process; they are restored afterwards."""
    root, uvicorn_error = logging.getLogger(), logging.getLogger("uvicorn.error")
    saved = (root.handlers[:], root.level, uvicorn_error.filters[:], sys.getswitchinterval(), gc.get_threshold())
    uvicorn_loggers = [logging.getLogger(f"uvicorn{part}") for part in ("", ".error", ".access", ".asgi")]
    saved_uvicorn = [(logger.level, logger.handlers[:], logger.propagate) for logger in uvicorn_loggers]

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["python -m service", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    yield run
    for logger, (level, handlers, propagate) in zip(uvicorn_loggers, saved_uvicorn, strict=True):
        logger.setLevel(level)
        logger.handlers[:], logger.propagate = handlers, propagate
    root.handlers[:], uvicorn_error.filters[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    sys.setswitchinterval(saved[3])
    gc.set_threshold(*saved[4])


def assert_one_line(code: int, stderr: str, path: Path, fault: str) -> None:
    assert code == 1, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert str(path) in lines[0] and FAULTS[fault] in lines[0], lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("fault", [fault for fault in FAULTS if fault != SUBPROCESS_FAULT])
def test_model_fault_ends_start_with_one_line(model_dir, tmp_path, run_main, fault):
    path = break_model(model_dir, tmp_path, fault)
    assert_one_line(*run_main("--port", str(free_port()), "--model-dir", str(path)), path, fault)


@pytest.mark.slow  # starts other processes or drives a browser
def test_model_fault_ends_the_process_with_one_line(model_dir, tmp_path):
    path = break_model(model_dir, tmp_path, SUBPROCESS_FAULT)
    assert_one_line(*run_service("--port", str(free_port()), "--model-dir", str(path)), path, SUBPROCESS_FAULT)


@pytest.mark.slow  # starts other processes or drives a browser
def test_port_in_use_fails_before_loading_the_model(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, stderr = run_service("--port", str(port), "--model-dir", str(model_dir))
    assert code == 1
    assert error_lines(stderr) == [line for line in stderr.splitlines() if line.strip()]  # nothing else printed
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in error_lines(stderr)[0]


def test_traceback_at_debug_level(tmp_path, run_main):
    code, stderr = run_main("--port", str(free_port()), "--log-level", "debug",
                            "--model-dir", str(tmp_path / "nothing"))
    assert code == 1
    assert "Traceback" in stderr and "no such folder" in stderr


@pytest.mark.slow  # starts other processes or drives a browser
def test_start_imports_tensorflow_without_keras_3():
    """`python -m service` imports TensorFlow with TF_USE_LEGACY_KERAS=1 unless set (this suite sets it for every
    process it starts; here it is unset): Keras 3 and scikit-learn stay out of the service's start."""
    code = ("import sys; import service.__main__, service.app; import tensorflow; "
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'sklearn'}); assert not loaded, loaded")
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    process = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=240)
    assert process.returncode == 0, process.stderr[-3000:]
