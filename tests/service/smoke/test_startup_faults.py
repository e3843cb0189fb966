"""Each start-up fault ends `python -m service` with a non-zero exit and one error line naming the path and the
problem (no traceback at the default log level). The servers start at once, so their TensorFlow imports overlap."""

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import REPO_ROOT

pytestmark = pytest.mark.slow  # starts other processes or drives a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture(scope="module")
def outcomes(model_dir, tmp_path_factory):
    """fault -> (exit code, stderr, model path) for every fault, and the port-in-use case, run concurrently."""
    root = tmp_path_factory.mktemp("faults")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    runs = {}
    for fault in [*FAULTS, "port_in_use"]:
        path = model_dir if fault == "port_in_use" else break_model(model_dir, root, fault)
        port = busy.getsockname()[1] if fault == "port_in_use" else free_port()
        process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--model-dir", str(path)],
                                   cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        runs[fault] = (process, path, port)
    results = {}
    for fault, (process, path, port) in runs.items():
        _, stderr = process.communicate(timeout=240)
        results[fault] = (process.returncode, stderr, path, port)
    busy.close()
    return results


def error_lines(stderr: str) -> list[str]:
    """The service's ERROR lines (TensorFlow's own C++ lines, such as a failed CUDA probe, have their own format)."""
    return [line for line in stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\d [\d:,]+ ERROR ", line)]


@pytest.mark.parametrize("fault", FAULTS)
def test_model_fault_ends_start_with_one_line(outcomes, fault):
    code, stderr, path, _ = outcomes[fault]
    assert code == 1, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert str(path) in lines[0] and FAULTS[fault] in lines[0], lines[0]
    assert "Traceback" not in stderr


def test_port_in_use_fails_before_loading_the_model(outcomes):
    code, stderr, _, port = outcomes["port_in_use"]
    assert code == 1
    assert error_lines(stderr) == [line for line in stderr.splitlines() if line.strip()]  # nothing else printed
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in error_lines(stderr)[0]


def test_traceback_at_debug_level(model_dir, tmp_path):
    process = subprocess.run([sys.executable, "-m", "service", "--port", str(free_port()), "--log-level", "debug",
                              "--model-dir", str(tmp_path / "nothing")], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=240)
    assert process.returncode == 1
    assert "Traceback" in process.stderr and "no such folder" in process.stderr
