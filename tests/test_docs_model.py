"""The model metrics in README.md and MODEL_CARD.md are those of the version served by default (the highest version
folder under models/mnist_vae), read from its metadata.json: the test figures when its metadata has them (else the
block must say they are not there yet), its training run's held-out figures, its calibration and active units. When
a new version lands or its evaluation is written, this fails until the tables are rewritten from its metadata."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "models" / "mnist_vae"


def default_version() -> tuple[int, dict]:
    version = max(int(path.name) for path in BASE.iterdir() if path.name.isdigit())
    return version, json.loads((BASE / str(version) / "metadata.json").read_text())


def _block(doc: str) -> str:
    found = re.search(r"<!-- model-metrics:begin.*?<!-- model-metrics:end -->", (REPO / doc).read_text(), flags=re.S)
    assert found, f"{doc} has no model-metrics block"
    return found.group(0)


@pytest.mark.parametrize("doc", ["README.md", "MODEL_CARD.md"])
def test_metrics_table_is_the_default_versions(doc):
    version, metadata = default_version()
    block = _block(doc)
    assert f"version {version}" in block, f"{doc}'s metrics are not labelled version {version} (the default)"
    metrics = metadata.get("metrics") or {}
    if "test_nll_iwae_nats" in metrics:
        for key in ("test_elbo_nats", "test_nll_iwae_nats"):
            assert f"{metrics[key]:.2f}" in block, f"{doc}: {key} = {metrics[key]:.2f} of version {version} is missing"
        assert f"k = {metrics['iwae_k']}" in block, f"{doc}: the NLL's k ({metrics['iwae_k']}) is missing"
    else:
        assert "not yet in its metadata" in block, f"{doc}: version {version} has no test NLL yet; say so"
    if "active_units" in metrics:
        assert f"{metrics['active_units']} of {metadata['latent_size']}" in block, f"{doc}: active units"
    history = (metadata.get("training") or {}).get("history") or []
    if history and "val_nll_iwae" in history[-1]:
        for key in ("val_loss", "val_nll_iwae"):
            assert f"{history[-1][key]:.2f}" in block, f"{doc}: the held-out {key} of version {version} is missing"
    calibration = metadata.get("calibration")
    if calibration and "test_nll_iwae_nats" not in metrics:
        median = float(np.interp(50, calibration["levels"], calibration["values"]))
        assert f"{median:.2f}" in block, f"{doc}: the calibration's median NLL {median:.2f} is missing"


def test_the_docs_say_which_version_is_served_by_default():
    version, _ = default_version()
    readme = (REPO / "README.md").read_text()
    assert f"version {version}" in "\n".join(readme.splitlines()[:60]), "the README's top does not name the version"
