"""The model metrics in README.md and MODEL_CARD.md are those of the version served by default (the highest version
folder under models/mnist_vae), read from its metadata.json. When a new version lands, this fails until the tables
are rewritten from its metadata."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "models" / "mnist_vae"


def default_version() -> tuple[int, dict]:
    version = max(int(path.name) for path in BASE.iterdir() if path.name.isdigit())
    return version, json.loads((BASE / str(version) / "metadata.json").read_text())


@pytest.mark.parametrize("doc", ["README.md", "MODEL_CARD.md"])
def test_metrics_table_is_the_default_versions(doc):
    version, metadata = default_version()
    text = (REPO / doc).read_text()
    block = re.search(r"<!-- model-metrics:begin.*?<!-- model-metrics:end -->", text, flags=re.S)
    assert block, f"{doc} has no model-metrics block"
    block = block.group(0)
    assert f"version {version}" in block, f"{doc}'s metrics are not labelled version {version} (the default)"
    metrics = metadata["metrics"]
    for key in ("test_elbo_nats", "test_nll_iwae_nats"):
        assert f"{metrics[key]:.2f}" in block, f"{doc}: {key} = {metrics[key]:.2f} of version {version} is missing"
    assert f"k = {metrics['iwae_k']}" in block, f"{doc}: the NLL's k ({metrics['iwae_k']}) is missing"


def test_the_docs_say_which_version_is_served_by_default():
    version, _ = default_version()
    readme = (REPO / "README.md").read_text()
    assert f"version {version}" in "\n".join(readme.splitlines()[:60]), "the README's top does not name the version"
