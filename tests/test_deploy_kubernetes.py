"""The Kubernetes and KServe manifests, validated offline: every resource against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), the InferenceService against KServe's vendored CRD schema,
and the wiring between them (probes, ports, labels, drain time) against the image. No cluster runs here."""

import copy
import gzip
import re
from pathlib import Path

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes" / "base"
GPU = ROOT / "deploy" / "kubernetes" / "gpu"
KSERVE = ROOT / "deploy" / "kserve"
# The oldest Kubernetes still widely run and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
POD_LABELS = {"app.kubernetes.io/name": "mnist-vae", "app.kubernetes.io/component": "api"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def base_resources() -> dict[str, dict]:
    """{kind: resource} of the files the base kustomization lists."""
    return {doc["kind"]: doc for doc in (load(BASE / name) for name in load(BASE / "kustomization.yaml")["resources"])}


def deployment() -> dict:
    return base_resources()["Deployment"]


def gpu_deployment() -> dict:
    """The GPU overlay's Deployment, rendered as kustomize renders it: the base, the overlay's JSON patch
    (RFC 6902, applied by the jsonpatch library), the overlay's image tag."""
    overlay = load(GPU / "kustomization.yaml")
    (patch,) = overlay["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": deployment()["metadata"]["name"]}
    rendered = jsonpatch.apply_patch(deployment(), load(GPU / patch["path"]))
    (image,) = overlay["images"]
    for container in rendered["spec"]["template"]["spec"]["containers"]:
        if container["image"] == image["name"]:
            container["image"] = f"{image['name']}:{image['newTag']}"
    return rendered


def api_container(resource: dict) -> dict:
    (container,) = resource["spec"]["template"]["spec"]["containers"]
    return container


def dockerfile_env(name: str) -> str:
    return re.search(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)


# --- schemas ---


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
def test_base_manifest_is_valid_kubernetes(kind, version):
    kubernetes_validate.validate(base_resources()[kind], version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_gpu_overlay_renders_a_valid_deployment(version):
    rendered = gpu_deployment()
    kubernetes_validate.validate(rendered, version, strict=True)
    container = api_container(rendered)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "mnist-vae-api:gpu"
    assert rendered["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_strict_validation_rejects_an_unknown_field():
    """The check above can fail: a misspelt field is an error, not silently dropped."""
    broken = copy.deepcopy(deployment())
    api_container(broken)["readinesProbe"] = api_container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest():
    listed = set(load(BASE / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert load(GPU / "kustomization.yaml")["resources"] == ["../base"]


# --- wiring ---


def test_probes_use_the_service_endpoints_on_the_served_port():
    container = api_container(deployment())
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    port = next(port for port in container["ports"] if port["name"] == "http")
    assert port["containerPort"] == int(dockerfile_env("VAE_PORT")) == 8000
    env_ports = {e["name"]: int(e["value"]) for e in container["env"] if e["name"].endswith("_PORT")}
    assert ports == {"http": env_ports["VAE_PORT"], "grpc-v2": env_ports["VAE_GRPC_PORT"],
                     "grpc-tfserving": env_ports["VAE_TFSERVING_GRPC_PORT"], "metrics": env_ports["VAE_METRICS_PORT"]}
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == int(dockerfile_env("VAE_METRICS_PORT"))
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["VAE_PORT"]) == port["containerPort"] and env["VAE_HOST"] == "0.0.0.0"
    assert env["VAE_MODEL_BASE_PATH"] == dockerfile_env("VAE_MODEL_BASE_PATH")
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
    assert all(probe["port"] == port["name"] for probe in probes.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "time to load and warm the model up"


def test_pod_runs_non_root_on_a_read_only_root_with_a_tmp_volume():
    pod = deployment()["spec"]["template"]["spec"]
    container = api_container(deployment())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert {v["name"]: v for v in pod["volumes"]}[mount["name"]]["emptyDir"]


def test_termination_grace_covers_the_drain():
    """preStop (endpoint removal reaching the proxies) plus the requests in flight fit in the grace period, the
    same bound as compose's stop_grace_period."""
    pod = deployment()["spec"]["template"]["spec"]
    pre_stop = api_container(deployment())["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) < pod["terminationGracePeriodSeconds"]
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"stop_grace_period: {pod['terminationGracePeriodSeconds']}s" in compose


def test_resources_are_requested_and_limited():
    resources = api_container(deployment())["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_service_hpa_and_pdb_select_the_deployment():
    resources = base_resources()
    dep, service = resources["Deployment"], resources["Service"]
    hpa, pdb = resources["HorizontalPodAutoscaler"], resources["PodDisruptionBudget"]
    assert dep["spec"]["template"]["metadata"]["labels"] == POD_LABELS
    assert dep["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert service["spec"]["selector"] == POD_LABELS
    assert service["spec"]["ports"][0]["targetPort"] == api_container(dep)["ports"][0]["name"]
    assert pdb["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    # A drain can always evict one pod without breaking the budget.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# --- KServe ---


def strict(schema):
    """A CRD's structural schema as kubectl --validate=strict reads it: an object that lists its properties and
    does not preserve unknown fields accepts no other field."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def inference_service_schema():
    # libyaml's loader (PyYAML's C binding): the vendored CRD is a 2 MB file that the pure-Python loader parses slowly.
    crd = yaml.load(gzip.decompress((KSERVE / "schema" / "serving.kserve.io_inferenceservices.yaml.gz").read_bytes()),
                    Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == "InferenceService"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return strict(version["schema"]["openAPIV3Schema"])


def inference_service() -> dict:
    return load(KSERVE / "inferenceservice.yaml")


def test_inference_service_matches_the_kserve_crd(inference_service_schema):
    resource = inference_service()
    assert resource["apiVersion"] == "serving.kserve.io/v1beta1" and resource["kind"] == "InferenceService"
    jsonschema.Draft7Validator(inference_service_schema).validate(resource)


def test_kserve_strict_schema_rejects_an_unknown_field(inference_service_schema):
    broken = inference_service()
    broken["spec"]["predictor"]["protocolVersion"] = "v2"  # belongs to `model:` predictors, not custom containers
    with pytest.raises(jsonschema.ValidationError, match="protocolVersion"):
        jsonschema.Draft7Validator(inference_service_schema).validate(broken)


def test_inference_service_predictor_is_our_image_on_kserves_port():
    predictor = inference_service()["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"].startswith("mnist-vae-api:")
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert int(env["VAE_PORT"]) == ports["http1"] == 8080
    # KServe marks a port whose name holds "grpc" or "h2c" as h2c and routes the v2 gRPC service to it.
    (grpc_port,) = [name for name in ports if "grpc" in name or "h2c" in name]
    assert env["VAE_GRPC"] == "true" and int(env["VAE_GRPC_PORT"]) == ports[grpc_port] == 8081
    assert env["VAE_TFSERVING_GRPC_PORT"] == "0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["terminationGracePeriodSeconds"] == deployment()["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    # The container as a Kubernetes container too (KServe passes it on to the pod).
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container], "volumes": predictor["volumes"],
                    "securityContext": predictor["securityContext"]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)
