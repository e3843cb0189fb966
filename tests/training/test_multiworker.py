"""Multi-worker training (MultiWorkerMirroredStrategy from TF_CONFIG) with two worker processes on 127.0.0.1, against
the session's one-process run of the same recipe (tiny_run in conftest.py); a worker killed mid-epoch; bad TF_CONFIG
and peers that never come up.

The processes train small models (base depth 8) on a few hundred of the digits in tests/data/mnist, with proxy
variables unset (gRPC would honour them) and a timeout on each."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.ports import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
MNIST = REPO / "tests" / "data" / "mnist"
TIMEOUT = 120  # seconds, for any one process
SMALL_MODEL = {"encoded_size": 4, "base_depth": 8}
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")

# Runs train() and leaves its final weights and step losses beside the run, so the test can compare processes.
RUNNER = """
import json, os, sys
import numpy as np
from training.model import ModelConfig
from training.train import TrainConfig, train
out, kwargs = sys.argv[1], json.loads(sys.argv[2])
model_cfg, cfg = ModelConfig(**kwargs.pop("model")), TrainConfig(**kwargs.pop("train"))
vae = train(model_cfg=model_cfg, train_cfg=cfg, verbose=0, **kwargs)
np.savez(out, losses=np.array(vae.step_losses),
         **{f"w{i}": w for i, w in enumerate(vae.encoder_body.get_weights() + vae.decoder_body.get_weights())})
"""


def env(tf_config=None):
    e = {k: v for k, v in os.environ.items() if k.lower() not in PROXIES}
    e.pop("TF_CONFIG", None)
    e["PYTHONPATH"] = str(REPO)
    if tf_config is not None:
        e["TF_CONFIG"] = json.dumps(tf_config)
    return e


def cluster(n):
    return {"worker": [f"127.0.0.1:{free_port()}" for _ in range(n)]}


def start(out, run_dir, tf_config, model, train, resume=False):
    kwargs = {"run_dir": str(run_dir), "data_dir": str(MNIST), "resume": resume, "strategy": "multi-worker",
              "cluster_timeout": 60.0, "step_timeout": 30.0, "model": model, "train": train}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(out), json.dumps(kwargs)], cwd=REPO,
                            env=env(tf_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_workers(tmp_path, run_dir, spec, tag, model, train, resume=False):
    return [start(tmp_path / f"{tag}{i}.npz", run_dir, {"cluster": spec, "task": {"type": "worker", "index": i}},
                  model, train, resume) for i in range(len(spec["worker"]))]


def finish(procs, timeout=TIMEOUT):
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append((p.returncode, out))
    return outputs


def assert_ok(outputs):
    for code, out in outputs:
        assert code == 0, out[-3000:]


def history(run_dir):
    from training.train import read_history

    return read_history(run_dir)


@pytest.mark.slow
def test_two_workers_train_as_one_process_does(tiny_run, tmp_path):
    """Two workers train the recipe of the session's one-process run (tiny_run: its config.json, the same data). Same
    seed, same global batch: the first step's loss equals one process's to 1e-4 relative, the two-epoch history
    agrees within 1%, both workers end with identical weights, only the chief writes the run, and its checkpoint
    exports a version that loads and scores."""
    one, single = tiny_run
    recipe = json.loads((one / "config.json").read_text())
    assert recipe["workers"] == 1 and recipe["data_dir"] == str(MNIST)
    workers = start_workers(tmp_path, tmp_path / "two", cluster(2), "w", recipe["model"], recipe["train"])
    assert_ok(finish(workers))

    w0, w1 = (np.load(tmp_path / f"{name}.npz") for name in ("w0", "w1"))
    assert single.step_losses[0] == pytest.approx(w0["losses"][0], rel=1e-4)
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    h1, h2 = history(one), history(tmp_path / "two")
    assert [r["epoch"] for r in h2] == [0, 1]
    for a, b in zip(h1, h2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.01) and b["val_loss"] == pytest.approx(a["val_loss"],
                                                                                                rel=0.01)
    run = tmp_path / "two"
    assert tf.train.latest_checkpoint(run / "checkpoints").endswith("ckpt-2")
    assert not list(run.glob(".workertemp*")), "the other worker's temporary checkpoints are left"
    assert json.loads((run / "config.json").read_text())["workers"] == 2

    from training.export import export_run

    version = export_run(run, tmp_path / "models", "mnist_vae")
    root = tf.saved_model.load(str(version))
    images = np.zeros((2, 28, 28, 1), np.float32)
    out = root.signatures["score"](images=tf.constant(images), k=tf.constant(4), seeds=tf.constant([0, 1], tf.int64))
    assert np.all(np.isfinite(out["nll"].numpy()))


def _iterations(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("optimizer/_iterations")]
    return int(reader.get_tensor(names[0]))


@pytest.mark.slow
def test_killed_worker_resumes_from_the_backup(tmp_path):
    """Worker 1 is killed in the middle of the first epoch; the chief stops too (a collective fails, or its watchdog
    ends it); restarting both resumes from the mid-epoch backup and finishes, and no epoch or step runs twice."""
    run = tmp_path / "run"
    spec = cluster(2)
    # A backup every 4 steps (not 2): half the checkpoint writes, and the first mid-epoch backup is still step 4.
    train = {"epochs": 2, "batch_size": 32, "train_limit": 1000, "validation_k": 2, "backup_every": 4}
    workers = start_workers(tmp_path, run, spec, "a", SMALL_MODEL, train)
    deadline = time.monotonic() + TIMEOUT
    # 31 steps an epoch: wait for a backup after step 4 (and before the epoch's end), then kill worker 1.
    while time.monotonic() < deadline:
        latest = tf.train.latest_checkpoint(run / "backup")
        if latest and 4 <= int(latest.rsplit("-", 1)[1]) < 31:
            break
        assert workers[0].poll() is None and workers[1].poll() is None, finish(workers)
        time.sleep(0.05)
    else:
        pytest.fail("no mid-epoch backup appeared")
    workers[1].send_signal(signal.SIGKILL)
    (code0, out0), (code1, _) = finish(workers, timeout=60)
    assert code1 == -signal.SIGKILL and code0 != 0, out0[-2000:]
    assert not (run / "checkpoints").exists() or tf.train.latest_checkpoint(run / "checkpoints") is None

    restarted = start_workers(tmp_path, run, spec, "b", SMALL_MODEL, train, resume=True)
    outputs = finish(restarted)
    assert_ok(outputs)
    assert [r["epoch"] for r in history(run)] == [0, 1]
    final = tf.train.latest_checkpoint(run / "checkpoints")
    assert final.endswith("ckpt-2") and _iterations(final) == 2 * 31  # no step ran twice, none was skipped
    b0 = np.load(tmp_path / "b0.npz")
    assert 0 < len(b0["losses"]) < 2 * 31  # the restarted workers ran only the steps after the backup


# The start-up failures: `python -m training train` with these arguments and TF_CONFIG (its peer never comes up; not
# JSON). Each process spends most of its time importing TensorFlow, so the failed_starts fixture starts those of the
# selected tests side by side.
FAILED_STARTS = {
    "test_peer_that_never_comes_up_ends_the_worker_with_one_line": (
        ["--strategy", "multi-worker", "--cluster-timeout", "1"],
        lambda: json.dumps({"cluster": {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]},
                            "task": {"type": "worker", "index": 0}})),
    "test_bad_tf_config_exits_2_before_any_work": ([], lambda: "{oops"),
}


@pytest.fixture(scope="module")
def failed_starts(request, tmp_path_factory):
    """finished(test name) -> (CompletedProcess, run folder): the FAILED_STARTS processes of the selected tests, all
    started when the first of them asks (two TensorFlow imports on two cores take about the time of one)."""
    selected = {item.originalname for item in request.session.items} & FAILED_STARTS.keys()
    started = {}
    for name in sorted(selected):
        args, tf_config = FAILED_STARTS[name]
        run_dir = tmp_path_factory.mktemp("start") / "run"
        started[name] = run_dir, subprocess.Popen(
            [sys.executable, "-m", "training", "train", "--run-dir", str(run_dir), "--data-dir", str(MNIST), *args],
            cwd=REPO, env={**env(), "TF_CONFIG": tf_config()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def finished(name):
        run_dir, proc = started[name]
        stdout, stderr = proc.communicate(timeout=TIMEOUT)  # TimeoutExpired fails the test; the teardown kills
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), run_dir

    yield finished
    for _, proc in started.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_peer_that_never_comes_up_ends_the_worker_with_one_line(failed_starts, request):
    proc, _ = failed_starts(request.node.originalname)
    assert proc.returncode == 128 + signal.SIGKILL or proc.returncode == -signal.SIGKILL
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "did not all come up: nothing for 1 s" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("text,message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG names no cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "is not one of its cluster's tasks"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "is not one of its cluster's tasks"),
])
def test_bad_tf_config_is_one_clear_error(text, message):
    from training.train import RunError, parse_tf_config

    with pytest.raises(RunError, match=message):
        parse_tf_config(text)


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_bad_tf_config_exits_2_before_any_work(failed_starts, request):
    proc, run_dir = failed_starts(request.node.originalname)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: TF_CONFIG is not valid JSON")
    assert not run_dir.exists()
