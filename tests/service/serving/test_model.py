"""Loading the SavedModel: the metadata contract is checked at start, with a message naming the mismatch."""

import json
import subprocess
import sys
import textwrap

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.serving.model import ModelContractError, load_model
from service.settings import REPO_ROOT, Settings


@pytest.fixture
def broken_model_dir(model_dir, tmp_path):
    """A model dir sharing the real SavedModel but with metadata.json edited by `edit`."""

    def make(edit) -> object:
        for name in ("saved_model.pb", "variables", "assets", "fingerprint.pb"):
            if (model_dir / name).exists():
                (tmp_path / name).symlink_to(model_dir / name)
        metadata = json.loads((model_dir / "metadata.json").read_text())
        edit(metadata)
        (tmp_path / "metadata.json").write_text(json.dumps(metadata))
        return tmp_path

    return make


def test_load_latent_size_mismatch_fails(broken_model_dir):
    path = broken_model_dir(lambda m: m.update(latent_size=m["latent_size"] + 1))
    with pytest.raises(ModelContractError, match=r"encode output mean has shape \[None, \d+\], metadata.json implies"):
        load_model(path, "/CPU:0")


def test_load_image_shape_mismatch_fails(broken_model_dir):
    path = broken_model_dir(lambda m: m.update(image_shape=[32, 32, 1]))
    expected = r"encode input images has shape \[None, 28, 28, 1\], metadata.json implies \[None, 32, 32, 1\]"
    with pytest.raises(ModelContractError, match=expected):
        load_model(path, "/CPU:0")


def test_load_missing_key_fails(broken_model_dir):
    path = broken_model_dir(lambda m: m.pop("latent_size"))
    with pytest.raises(ModelContractError, match="metadata.json does not follow the metadata schema: latent_size"):
        load_model(path, "/CPU:0")


def test_load_missing_dir_fails(tmp_path):
    with pytest.raises(ModelContractError, match="nowhere: no such folder"):
        load_model(tmp_path / "nowhere", "/CPU:0")


def test_startup_with_broken_metadata_fails_fast(broken_model_dir):
    path = broken_model_dir(lambda m: m.update(schema_version=99))
    with pytest.raises(ModelContractError, match="schema_version 99, readable versions are"):
        with TestClient(create_app(Settings(model_dir=path))):
            pass


@pytest.mark.slow  # a process of its own
def test_service_never_imports_training_or_tfp(model_dir):
    code = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from service.app import create_app
        from service.settings import Settings
        from tests.service.conftest import wait_until_ready
        with TestClient(create_app(Settings(model_dir={str(model_dir)!r}, batch_max_size=1))) as client:
            wait_until_ready(client)  # every signature has run
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "tensorflow_probability"))
        print(leaked)
        sys.exit(1 if leaked else 0)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_schema_2_model_without_score_signature_fails(broken_model_dir):
    path = broken_model_dir(lambda m: m.update(schema_version=2))
    with pytest.raises(ModelContractError, match=r"signatures \['score'\] are missing"):
        load_model(path, "/CPU:0")


def test_warm_up_calls_every_signature_at_every_size_side_by_side(model_dir):
    model = load_model(model_dir, "/CPU:0")
    seen = []
    for name in ("encode", "decode", "reconstruct"):
        call = getattr(model, name)
        setattr(model, name, lambda x, call=call, name=name: (seen.append((name, len(x))), call(x))[1])
    model.warm_up([1, 3, 5], threads=3)
    assert sorted(seen) == sorted((name, size) for name in ("encode", "decode", "reconstruct") for size in (1, 3, 5))
