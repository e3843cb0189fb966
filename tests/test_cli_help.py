"""Every command's --help shows the defaults a newcomer needs to know."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts other processes or drives a browser

REPO = Path(__file__).resolve().parents[1]


def _help(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", *args, "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())  # argparse wraps lines: compare with single spaces


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_training_help_shows_every_default(command):
    from training.__main__ import parser

    subparsers = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = _help("training", command)
    for action in subparsers.choices[command]._actions:
        flag = action.option_strings[0]
        if action.nargs == 0 or (command, flag) in (("evaluate", "--model-dir"), ("evaluate", "--run-dir")):
            continue  # --help, on/off flags, and evaluate's two sources (one of them is required)
        assert "default" in (action.help or ""), f"{command} {flag}: no default in its help"
        if action.default is not None:
            assert f"(default: {action.default})" in text, f"{command} {flag}: default not in --help"


def test_training_help_names_the_bundled_configuration():
    text = _help("training", "train")
    for default in ("--epochs EPOCHS total epochs of the run (default: 50)", "(default: 64)", "(default: 0.001)",
                    "(default: cosine)", "(default: 42)", "(default: runs/default)"):
        assert default in text


def test_service_help_shows_the_settings_defaults():
    from service.settings import Settings

    text = _help("service")
    for flag, name in (("--host", "host"), ("--port", "port"), ("--model-version-policy", "model_version_policy"),
                       ("--log-level", "log_level")):
        default = Settings.model_fields[name].default
        assert re.search(rf"{flag} \S+ .*?default: {re.escape(str(default))}\)", text), (flag, default, text)
    # The base path is absolute, and argparse may break it at a hyphen: compare without spaces.
    base_path = Settings.model_fields["model_base_path"].default
    assert f"(VAE_MODEL_BASE_PATH;default:{base_path})" in text.replace(" ", ""), text
    assert Settings.model_fields["model_dir"].default is None
    assert re.search(r"--model-dir \S+ .*?default: none\)", text), text
