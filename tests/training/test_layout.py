"""The layout of training/: one module holds the signatures and their maths, evaluate and export import it and not
each other, and the numpy likelihood helpers live in contract/ without TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)


def test_contract_likelihood_imports_no_tensorflow():
    out = _run("import sys, contract.likelihood; print('tensorflow' in sys.modules)")
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # two fresh interpreters importing TensorFlow
def test_evaluate_and_export_do_not_import_each_other():
    pairs = (("training.evaluate", "training.export"), ("training.export", "training.evaluate"))
    # Side by side: each interpreter spends most of its time importing TensorFlow.
    runs = [subprocess.Popen([sys.executable, "-c", f"import sys, {module}; print({other!r} in sys.modules)"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for module, other in pairs]
    for (module, _), run in zip(pairs, runs, strict=True):
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr[-3000:]
        assert stdout.strip() == "False", module


def test_background_helpers():
    from contract.likelihood import background_log_prob, fit_background, log_ratio, ratio_outlier, ratio_percentiles

    images = np.zeros((3, 28, 28, 1), np.uint8)
    images[0] = 255
    probs = fit_background(images)
    np.testing.assert_allclose(probs, (255 / 255 + 1) / 5)
    x = images.astype(np.float32) / 255.0
    expected = x.reshape(3, -1) @ np.log(probs) + (1 - x.reshape(3, -1)) @ np.log1p(-probs)
    np.testing.assert_allclose(background_log_prob(x, probs), expected)
    background = {"probs": probs, "values": [-10.0, 0.0, 10.0], "levels": [0.0, 50.0, 100.0]}
    llr = log_ratio(np.array([0.0, 0.0, 0.0]), x, background)
    np.testing.assert_allclose(llr, -expected)
    assert list(ratio_percentiles(np.array([-10.0, 5.0]), background)) == [0.0, 75.0]
    assert list(ratio_outlier(np.array([0.5, 50.0]), 99.0)) == [True, False]
