import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from training.export import export_run, read_metadata

SIGNATURES = ["decode", "encode", "reconstruct", "sample", "score", "serving_default"]


@pytest.fixture(scope="module")
def loaded(saved_model):
    return saved_model.root.signatures


def test_encode_signature_matches_keras_encoder(tiny_run, loaded, test_digits):
    _, vae = tiny_run
    x = tf.constant(test_digits[0][:8])
    q = vae.encoder(x)
    out = loaded["encode"](images=x)
    np.testing.assert_allclose(out["mean"], q.mean(), atol=1e-5)
    np.testing.assert_allclose(out["scale_tril"], q.scale.to_dense(), atol=1e-5)
    np.testing.assert_allclose(out["covariance"], q.covariance(), atol=1e-5)
    np.testing.assert_allclose(loaded["serving_default"](images=x)["mean"], q.mean(), atol=1e-5)


def test_decode_signature_matches_keras_decoder(tiny_run, loaded):
    _, vae = tiny_run
    z = tf.random.stateless_normal([8, 16], seed=[3, 4])
    p = vae.decoder(z)
    out = loaded["decode"](latents=z)
    assert out["mode"].shape == (8, 28, 28, 1)
    np.testing.assert_allclose(out["logits"], p.distribution.logits, atol=1e-5)
    np.testing.assert_allclose(out["probs"], p.distribution.probs_parameter(), atol=1e-5)
    np.testing.assert_array_equal(out["mode"], p.mode())


def test_reconstruct_signature_decodes_posterior_mean(tiny_run, loaded, test_digits):
    _, vae = tiny_run
    x = tf.constant(test_digits[0][:8])
    out = loaded["reconstruct"](images=x)
    mean = vae.encoder(x).mean()
    np.testing.assert_allclose(out["mean"], mean, atol=1e-5)
    np.testing.assert_allclose(out["probs"], vae.decoder(mean).distribution.probs_parameter(), atol=1e-5)


def test_sample_signature_is_deterministic_by_seed(tiny_run, loaded):
    _, vae = tiny_run
    call = lambda n, seed: loaded["sample"](num_samples=tf.constant(n), seed=tf.constant(seed, tf.int64))  # noqa: E731
    a, b, c = call(6, 7), call(6, 7), call(6, 8)
    for key in ("latents", "probs", "mode"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["latents"], c["latents"])
    assert a["latents"].shape == (6, 16) and a["mode"].shape == (6, 28, 28, 1)
    # Samples are decoded exactly as decode would, and come from N(0, I).
    np.testing.assert_allclose(a["probs"], vae.decoder(a["latents"]).distribution.probs_parameter(), atol=1e-5)
    big = call(4000, 1)["latents"].numpy()
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02
    # Large seeds use both 32-bit words.
    assert not np.allclose(call(2, 2**40)["latents"], call(2, 0)["latents"])


# What a fresh interpreter with TensorFlow alone sees of the export: every signature called, the modules it had to
# import, then `python -m tensorflow.python.tools.saved_model_cli show --all` run in the same interpreter (runpy: as
# `python -m` runs it), so that both checks pay for one TensorFlow start-up.
PLAIN_TENSORFLOW = """
import contextlib, io, json, runpy, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
s = m.signatures
enc = s["encode"](images=tf.zeros([2, 28, 28, 1]))
dec = s["decode"](latents=tf.zeros([3, 16]))
smp = s["sample"](num_samples=tf.constant(4), seed=tf.constant(1, tf.int64))
rec = s["reconstruct"](images=tf.ones([1, 28, 28, 1]))
scr = s["score"](images=tf.ones([2, 28, 28, 1]), k=tf.constant(3), seeds=tf.constant([1, 2], tf.int64))
result = {
    "signatures": sorted(s),
    "shapes": [list(enc["covariance"].shape), list(dec["probs"].shape), list(smp["mode"].shape),
               list(rec["mean"].shape), list(scr["nll"].shape)],
    "leaked": sorted(k for k in sys.modules if k.startswith(("tensorflow_probability", "training"))),
}
sys.argv = ["saved_model_cli", "show", "--dir", sys.argv[1], "--all"]
cli = io.StringIO()
with contextlib.redirect_stdout(cli):
    try:
        runpy.run_module("tensorflow.python.tools.saved_model_cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        result["cli_exit"] = e.code
result["cli"] = cli.getvalue()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def plain_tensorflow(exported):
    out = subprocess.run([sys.executable, "-c", PLAIN_TENSORFLOW, str(exported)], capture_output=True, text=True,
                         cwd="/", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_saved_model_loads_and_runs_without_tfp_or_training(plain_tensorflow):
    result = {key: plain_tensorflow[key] for key in ("signatures", "shapes", "leaked")}
    assert result == {"signatures": SIGNATURES, "shapes": [[2, 16, 16], [3, 28, 28, 1], [4, 28, 28, 1], [1, 16], [2]],
                      "leaked": []}


@pytest.mark.slow  # a fresh interpreter importing TensorFlow
def test_saved_model_cli_lists_every_signature(plain_tensorflow):
    assert plain_tensorflow.get("cli_exit") in (None, 0), plain_tensorflow["cli"][-3000:]
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in plain_tensorflow["cli"]
    assert "outputs['covariance']" in plain_tensorflow["cli"] and "inputs['num_samples']" in plain_tensorflow["cli"]


def test_metadata_describes_model_and_run(exported, tiny_run):
    meta = read_metadata(exported)
    assert exported.name == "1" and exported.parent.name == "mnist_vae"
    assert meta["model_name"] == "mnist_vae" and meta["model_version"] == 1
    assert meta["latent_size"] == 16 and meta["image_shape"] == [28, 28, 1]
    assert meta["signatures"]["encode"]["outputs"]["covariance"]["shape"] == [None, 16, 16]
    assert meta["signatures"]["sample"]["inputs"]["seed"]["dtype"] == "int64"
    assert meta["training"]["train"]["train_limit"] == 200 and meta["training"]["epochs_completed"] == 2
    assert len(meta["training"]["history"]) == 2
    assert meta["versions"]["tensorflow"] == tf.__version__ and meta["created_at"]


@pytest.fixture(scope="module")
def reexported(exported):
    """--from-model: version 2 beside version 1, rebuilt from version 1's variables (no run)."""
    return export_run(None, exported.parent.parent, "mnist_vae", from_model=exported)


def test_export_refuses_to_overwrite_and_numbers_next_version(tiny_run, exported, reexported):
    run_dir, _ = tiny_run
    base = exported.parent.parent
    with pytest.raises(FileExistsError, match="exists: pass --overwrite"):
        export_run(run_dir, base, "mnist_vae", version=1)
    assert reexported.name == "2" and read_metadata(reexported)["model_version"] == 2
    assert not [p for p in reexported.parent.iterdir() if p.name.startswith(".")], "no temporary folders left behind"
    assert reexported.stat().st_mode & 0o777 == 0o755, "a server running as another user can read the version"


def test_reexport_from_saved_model_keeps_the_weights(reexported, loaded, test_digits):
    """--from-model: a version rebuilt from another version's variables (no run) encodes identically."""
    meta = read_metadata(reexported)
    assert meta["schema_version"] == 2 and "score" in meta["signatures"]
    assert meta["training"]["weights_from"].startswith("mnist_vae version 1")
    assert meta["training"]["history"] == read_metadata(reexported.parent / "1")["training"]["history"]
    x = tf.constant(test_digits[0][:4])
    np.testing.assert_array_equal(tf.saved_model.load(str(reexported)).signatures["encode"](images=x)["mean"],
                                  loaded["encode"](images=x)["mean"])


def test_a_fine_tuned_export_keeps_the_records_of_the_runs_before_it(exported, tmp_path):
    """earlier_stages: the --init-from version's training record, then the stages that version kept, newest first."""
    from training.export import earlier_stages

    record = read_metadata(exported)["training"]
    assert earlier_stages(exported) == [record] and earlier_stages(None) == earlier_stages(tmp_path / "gone") == []
    document = json.loads((exported / "metadata.json").read_text())
    document["training"]["earlier_stages"] = [{"train": {"k": 5}, "history": []}]
    document["training"]["note"] = "about this version's own list of stages"  # not copied: it would mislead there
    (tmp_path / "metadata.json").write_text(json.dumps(document))
    assert earlier_stages(tmp_path) == [record, {"train": {"k": 5}, "history": []}]
    (tmp_path / "metadata.json").write_text("{not json")  # an unreadable record is no record, not a failed export
    assert earlier_stages(tmp_path) == []


def test_a_run_fine_tuned_from_an_exported_version(exported, tiny_run, mnist_dir, tmp_path):
    """--init-from: the run starts from the version's weights and architecture and records which weights those were
    (the fingerprint's checkpoint hash); its export keeps the version's training record, unless the folder now holds
    other weights."""
    from training.export import earlier_stages
    from training.model import ModelConfig
    from training.train import TrainConfig, checkpoint_hash, train

    run_dir = tmp_path / "fine-tuned"
    # A rate of 1e-12: Adam moves each weight by about that much, so the run ends where it started.
    vae = train(run_dir, ModelConfig(), TrainConfig(epochs=1, batch_size=32, train_limit=64, validation_k=1,
                                                    learning_rate=1e-12, init_from=str(exported)),
                data_dir=mnist_dir, verbose=0)
    _, origin = tiny_run
    assert vae.config.base_depth == 8, "the architecture of the version, not of the ModelConfig passed"
    for a, b in zip(vae.encoder_body.get_weights() + vae.decoder_body.get_weights(),
                    origin.encoder_body.get_weights() + origin.decoder_body.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["init_from_checkpoint_hash"] == checkpoint_hash(exported) is not None
    fine_tuned = export_run(run_dir, tmp_path / "models", "mnist_vae")
    record = read_metadata(fine_tuned)["training"]
    assert record["earlier_stages"] == [read_metadata(exported)["training"]]
    assert earlier_stages(exported, weights="1234") == []  # the folder re-exported with other weights since
