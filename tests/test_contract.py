"""The shared contract module: schema checks, version folders, protocol names, and no TensorFlow import."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import contract

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "mnist_vae"


def test_bundled_metadata_follows_the_schema():
    metadata = contract.read_metadata(BUNDLED / "1")
    assert metadata["model_name"] == "mnist_vae" and metadata["model_version"] == 1
    assert set(contract.REQUIRED_SIGNATURES) <= set(metadata["signatures"])


def test_read_metadata_names_the_path_and_the_problem(tmp_path):
    with pytest.raises(contract.MetadataError, match=f"{tmp_path}/metadata.json is missing"):
        contract.read_metadata(tmp_path)
    (tmp_path / contract.METADATA_FILE).write_text("{not json")
    with pytest.raises(contract.MetadataError, match="is not readable JSON"):
        contract.read_metadata(tmp_path)
    (tmp_path / contract.METADATA_FILE).write_text(json.dumps({"schema_version": 1, "model_name": "m"}))
    with pytest.raises(contract.MetadataError, match="model_version: Field required"):
        contract.read_metadata(tmp_path)


def test_write_then_read_round_trips_atomically(tmp_path):
    metadata = contract.read_metadata(BUNDLED / "1")
    contract.write_metadata(tmp_path, {**metadata, "model_version": 7})
    assert contract.read_metadata(tmp_path)["model_version"] == 7
    assert [p.name for p in tmp_path.iterdir()] == [contract.METADATA_FILE]  # no temporary file left behind


def test_version_folders_skip_half_written_and_foreign_folders(tmp_path):
    shutil.copytree(BUNDLED / "1", tmp_path / "3")
    (tmp_path / "4").mkdir()  # no files yet: an export in progress
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / contract.SAVED_MODEL_FILE).write_bytes(b"")  # metadata not written yet
    (tmp_path / ".6-tmp").mkdir()
    (tmp_path / "notes").mkdir()
    assert contract.version_folders(tmp_path) == {3: tmp_path / "3"}
    assert contract.version_folders(tmp_path / "missing") == {}


def test_signatures_by_schema_version():
    assert contract.signatures_for(1) == contract.REQUIRED_SIGNATURES
    assert contract.SCORE in contract.signatures_for(2)


def test_protocol_names_cover_every_signature():
    names = contract.v2_model_names("mnist_vae")
    assert names["mnist_vae"] == contract.DEFAULT_SIGNATURE
    assert set(names.values()) == {*contract.REQUIRED_SIGNATURES, contract.SCORE}
    assert contract.SERVING_DEFAULT in contract.tfserving_signature_names()


def test_contract_imports_neither_tensorflow_nor_tfp():
    code = "import sys, contract; sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('tensorflow', 'tensorflow_probability', 'tf_keras')) != [])"
    assert subprocess.run([sys.executable, "-c", code], cwd=BUNDLED.parents[1]).returncode == 0
