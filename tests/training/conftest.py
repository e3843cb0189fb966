import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Real MNIST digits shipped with the repository: the first 1,000 training and 1,000 test digits of the standard
# files, in the same IDX .gz format (made by scripts/make_mnist_subset.py). No test needs the full set.
MNIST_SUBSET = REPO / "tests" / "data" / "mnist"


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
