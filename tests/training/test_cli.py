import subprocess
import sys
from pathlib import Path

import pytest

from training.__main__ import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--epochs", "0"], "--epochs: must be a positive integer, got 0"),
        (["train", "--learning-rate", "-1"], "--learning-rate: must be a positive number, got -1"),
        (["train", "--batch-size", "many"], "--batch-size: invalid _positive_int value: 'many'"),
        (["train", "--lr-schedule", "step"], "invalid choice: 'step'"),
        (["evaluate"], "one of the arguments --model-dir --run-dir is required"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_cli_bad_arguments_exit_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_bad_data_folder_names_it(tmp_path, capsys):
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "missing")])
    assert code == 2
    assert f"error: MNIST data folder does not exist: {tmp_path / 'missing'}" in capsys.readouterr().err


def test_cli_update_metadata_needs_model_dir_before_evaluating(tmp_path, capsys):
    assert main(["evaluate", "--run-dir", str(tmp_path), "--update-metadata"]) == 2
    assert "error: --update-metadata needs --model-dir" in capsys.readouterr().err


def test_cli_export_without_checkpoint_is_clear(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model": {}, "train": {}}')
    assert main(["export", "--run-dir", str(tmp_path), "--base-dir", str(tmp_path / "models")]) == 2
    assert "error: no checkpoint in" in capsys.readouterr().err


def test_cli_help_documents_subcommands(capsys):
    """In this process (tests/test_cli_help.py runs `python -m training ... --help` in a fresh one)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--resume", "--data-dir", "--epochs", "--batch-size", "--learning-rate", "--beta", "--seed"):
        assert flag in out


def test_cli_help_and_bad_arguments_import_no_tensorflow():
    """A fresh interpreter (this one has TensorFlow loaded): --help and an argument error are answered before the
    subcommand imports TensorFlow and the training modules."""
    code = """
import sys
from training.__main__ import main
for argv in (["--help"], ["train", "--help"], ["train", "--epochs", "0"], ["evaluate"]):
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in ("tensorflow", "tensorflow_probability", "tf_keras", "training.data", "training.train")
               if m in sys.modules)
assert not heavy, heavy
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--epochs: must be a positive integer, got 0" in out.stderr
