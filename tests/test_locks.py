"""The hashed lock files (scripts/lock) agree with pyproject.toml's pins: every package pinned there is locked at
the same version, and every locked package carries hashes."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"dev": ("train", "serve", "dev", "tf"), "serve-cpu": ("serve", "cpu")}


def pins(extras: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in extras for s in project["optional-dependencies"][extra])]
    found = (re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", spec.strip()) for spec in specs)
    return {normal(m.group(1)): m.group(2) for m in found if m}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(name: str) -> tuple[dict[str, str], list[str]]:
    text = (ROOT / "requirements" / f"{name}.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$\n((?:\s+--hash=sha256:\w+(?: \\)?\n)+)", text, re.M)
    unhashed = [line for line in text.splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", line) and not line.endswith("\\")]
    return {normal(package): version for package, version, _ in entries}, unhashed


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_is_locked_at_its_version_with_hashes(lock):
    versions, unhashed = locked(lock)
    assert not unhashed, unhashed
    wanted = pins(LOCKS[lock])
    assert wanted, "no exact pins found in pyproject.toml"
    mismatched = {name: (version, versions.get(name)) for name, version in wanted.items()
                  if versions.get(name) != version}
    assert not mismatched, f"pyproject pin vs {lock}.lock: {mismatched} (run scripts/lock)"
