"""Settings come from VAE_* variables, and `python -m service` flags override them."""

import gc
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import parse_settings
from service.process import ProcessTuning
from service.settings import BUNDLED_MODEL_BASE_PATH, REPO_ROOT, Settings


def test_settings_defaults_point_at_bundled_model(monkeypatch):
    for name in ("VAE_MODEL_DIR", "VAE_MODEL_BASE_PATH", "VAE_PORT", "VAE_BATCH_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_base_path == BUNDLED_MODEL_BASE_PATH == REPO_ROOT / "models" / "mnist_vae"
    assert settings.model_dir is None
    assert (settings.model_version_policy, settings.model_versions, settings.model_poll_s) == ("latest", (), 2.0)
    assert (settings.port, settings.batch_max_size, settings.batch_max_delay_ms) == (8000, 256, 2.0)


def test_settings_read_from_environment(monkeypatch):
    monkeypatch.setenv("VAE_PORT", "9001")
    monkeypatch.setenv("VAE_BATCH_MAX_SIZE", "1")
    monkeypatch.setenv("VAE_GPU_MEMORY_GROWTH", "false")
    settings = Settings()
    assert (settings.port, settings.batch_max_size, settings.gpu_memory_growth) == (9001, 1, False)


def test_parse_settings_flags_override_environment(monkeypatch):
    monkeypatch.setenv("VAE_PORT", "9001")
    settings = parse_settings(["--port", "9002", "--model-dir", "/tmp/model", "--host", "0.0.0.0"])
    assert (settings.port, settings.model_dir, settings.host) == (9002, Path("/tmp/model"), "0.0.0.0")


@pytest.mark.parametrize("name,value", [("VAE_BATCH_MAX_SIZE", "0"), ("VAE_QUEUE_MAX", "-1"), ("VAE_PORT", "http")])
def test_settings_bad_value_fails_at_start(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("VAE_").lower()):
        Settings()


def test_process_tuning_sets_the_gil_switch_interval_and_gc_threshold():
    """What `python -m service` installs (service/process.py); a library user's process keeps its own."""
    before = sys.getswitchinterval(), gc.get_threshold()
    try:
        ProcessTuning(gil_switch_interval_ms=0.7).install()
        assert sys.getswitchinterval() == pytest.approx(0.0007) and gc.get_threshold()[0] == 20_000
    finally:
        sys.setswitchinterval(before[0])
        gc.set_threshold(*before[1])


def test_settings_versions_from_environment_and_flags(monkeypatch):
    monkeypatch.setenv("VAE_MODEL_VERSION_POLICY", "specific")
    monkeypatch.setenv("VAE_MODEL_VERSIONS", "1, 3")
    settings = Settings()
    assert (settings.model_version_policy, settings.model_versions) == ("specific", (1, 3))
    settings = parse_settings(["--model-base-path", "/models/mnist_vae", "--model-versions", "[2]",
                               "--model-name", "digits", "--model-version-policy", "all"])
    assert (settings.model_base_path, settings.model_versions, settings.model_name) == (
        Path("/models/mnist_vae"), (2,), "digits")
    assert settings.model_version_policy == "all"


@pytest.mark.parametrize("name,value", [("VAE_MODEL_VERSION_POLICY", "newest"), ("VAE_MODEL_VERSIONS", "two")])
def test_settings_bad_version_settings_fail_at_start(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("VAE_").lower()):
        Settings()


def test_settings_specific_policy_without_versions_fails_at_start(monkeypatch):
    monkeypatch.setenv("VAE_MODEL_VERSION_POLICY", "specific")
    monkeypatch.delenv("VAE_MODEL_VERSIONS", raising=False)
    with pytest.raises(ValidationError, match="needs model_versions"):
        Settings()


def test_fastapi_opentelemetry_follows_its_setting(monkeypatch):
    """Off by default (FastAPI would look for an OpenTelemetry SDK on every request); on when asked."""
    from service.app import create_app

    monkeypatch.delenv("VAE_OPENTELEMETRY", raising=False)
    off = create_app(Settings())
    assert not any(off._telemetry[key] for key in ("tracing", "metrics", "logs"))
    monkeypatch.setenv("VAE_OPENTELEMETRY", "true")
    on = create_app(Settings())
    assert all(on._telemetry[key] for key in ("tracing", "metrics", "logs"))
