import pathlib
import subprocess
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Real MNIST digits shipped with the repository: the first 1,000 training and 1,000 test digits of the standard
# files, in the same IDX .gz format (made by scripts/make_mnist_subset.py). No test needs the full set.
MNIST_SUBSET = REPO / "tests" / "data" / "mnist"


def pytest_configure(config):
    config.addinivalue_line("markers", "early(**commands): fresh processes the test reads, started from the first "
                                       "test of tests/training on (conftest.py: EarlyProcesses)")


class EarlyProcesses:
    """The processes of the selected tests' @pytest.mark.early(name=command, ...), started from the first test of
    tests/training on, one after another (a thread starts the next when one ends), or at once when a test asks for
    one not started yet. The slow tests that only wait on fresh interpreters, each spending seconds importing
    TensorFlow, then find them finished: they ran on the core the in-process tests leave idle, one at a time so as
    not to slow those. A command is a callable taking a new temporary folder and returning subprocess.Popen's
    arguments (a dict); output is piped, as text."""

    def __init__(self, commands):
        self.commands = commands  # {(test node id, name): (command, temporary folder)}, in the tests' order
        self.started = {}
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._in_turn, name="early-processes", daemon=True)
        self.thread.start()

    def _start(self, key):
        with self.lock:
            if key not in self.started and not self.closed:
                command, tmp = self.commands[key]
                self.started[key] = subprocess.Popen(**command(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                     text=True)
            return self.started.get(key)

    def _in_turn(self):
        for key in self.commands:
            proc = self._start(key)
            if proc is None:
                return
            proc.wait()

    def finished(self, key, timeout):
        """(CompletedProcess, temporary folder) of the process `key`, waited for at most `timeout` s more (while
        this process waits, the next one not started yet runs beside it)."""
        proc = self._start(key)
        pending = next((k for k in self.commands if k not in self.started), None)
        if pending is not None:
            self._start(pending)
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), self.commands[key][1]

    def close(self):
        with self.lock:
            self.closed = True
        for proc in self.started.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self.thread.join()


@pytest.fixture(scope="session", autouse=True)
def early_processes(request, tmp_path_factory):
    here = pathlib.Path(__file__).parent
    commands = {}
    for item in request.session.items:
        marker = item.get_closest_marker("early")
        if marker is not None and item.path.is_relative_to(here):
            for name, command in marker.kwargs.items():
                commands[item.nodeid, name] = command, tmp_path_factory.mktemp("early")
    if not commands:
        yield None
        return
    processes = EarlyProcesses(commands)
    yield processes
    processes.close()


@pytest.fixture
def early(request, early_processes):
    """finished(name) -> (CompletedProcess, its temporary folder): this test's @pytest.mark.early process `name`,
    waited for at most 120 s more (TimeoutExpired fails the test; the session's teardown kills the process)."""
    return lambda name: early_processes.finished((request.node.nodeid, name), timeout=120)


@pytest.fixture(scope="session")
def mnist_dir():
    return MNIST_SUBSET


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist_dir):
    """A real two-epoch run on 200 training images (6 steps of 32 an epoch; and 200 test images for validation: two
    batches of 100, so one trace of the scoring function an epoch where 256 took two), trained once for the session:
    the train, export and evaluate tests read it, and the multi-worker test compares two workers against it. The
    bundled latent size (16: the signatures' shapes) with narrow convolutions (base depth 8, not 32) and a 2-sample
    validation bound (not 10): the same code paths at a fraction of the arithmetic."""
    from training.model import ModelConfig
    from training.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("run")
    vae = train(run_dir, ModelConfig(base_depth=8),
                TrainConfig(epochs=2, batch_size=32, train_limit=200, validation_k=2), data_dir=mnist_dir, verbose=0)
    return run_dir, vae


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    from training.export import export_run

    run_dir, _ = tiny_run
    return export_run(run_dir, tmp_path_factory.mktemp("models"), "mnist_vae")


@pytest.fixture(scope="session")
def saved_model(exported):
    """The export loaded once, as `python -m training evaluate --model-dir` loads it (its .root: the loaded object,
    whose signatures the export tests call)."""
    from training.evaluate import Model

    return Model.from_saved_model(exported)


@pytest.fixture(scope="session")
def test_digits(mnist_dir):
    from training import data

    images, labels = data.load_mnist("test", mnist_dir, limit=64)
    return data.fixed_binarization(images), labels
