"""The training manifests in deploy/kubernetes/training/, validated offline: the Job, Service and volume claim against
Kubernetes' own schemas (strict), the TFJob against the Kubeflow Training Operator's vendored CRD schema, and the
TF_CONFIG the Indexed Job's shell builds against training's own TF_CONFIG check. No cluster runs here."""

import functools
import gzip
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from training.__main__ import parser
from training.train import parse_tf_config

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ROOT / "deploy" / "kubernetes" / "training"
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def docs(name):
    return {doc["kind"]: doc for doc in yaml.safe_load_all((TRAINING / name).read_text())}


@functools.cache
def tfjob_schema():
    # libyaml's loader (PyYAML's C binding): the vendored CRD is a large file that the pure-Python loader parses slowly.
    crd = yaml.load(gzip.decompress((TRAINING / "schema" / "kubeflow.org_tfjobs.yaml.gz").read_bytes()),
                    Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name,kind", [("indexed-job.yaml", "Job"), ("indexed-job.yaml", "Service"),
                                       ("pvc.yaml", "PersistentVolumeClaim")])
def test_manifests_are_valid_kubernetes(name, kind, version):
    kubernetes_validate.validate(docs(name)[kind], version, strict=True)


def test_tfjob_is_valid_against_the_crd():
    tfjob = docs("tfjob.yaml")["TFJob"]
    assert tfjob["apiVersion"] == "kubeflow.org/v1"
    jsonschema.validate(tfjob, tfjob_schema())
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the operator's default container name
    # The pod template is a Kubernetes pod spec: validate it as one.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": worker["template"]["spec"]}
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_crd_schema_rejects_a_bad_tfjob():
    tfjob = docs("tfjob.yaml")["TFJob"]
    tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tfjob, tfjob_schema())


def _train_args(args):
    return parser().parse_args(args)


def test_both_manifests_run_the_same_valid_train_command():
    tfjob_args = docs("tfjob.yaml")["TFJob"]["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
        "args"]
    parsed = _train_args(tfjob_args)
    assert parsed.strategy == "multi-worker" and parsed.resume_if_exists
    script = docs("indexed-job.yaml")["Job"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    line = script[script.index("exec python -m training ") + len("exec python -m training "):]
    job_args = line.replace("\\\n", " ").split()
    assert vars(_train_args(job_args)) == vars(parsed)


@pytest.mark.parametrize("index", [0, 1])
def test_indexed_job_builds_tf_config_from_the_pod_index(index, tmp_path):
    job = docs("indexed-job.yaml")
    container = job["Job"]["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    script = script[: script.index("exec python -m training")] + 'printf %s "$TF_CONFIG"\n'
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "JOB_COMPLETION_INDEX": str(index)}
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    cluster, task = parse_tf_config(out)
    service = job["Service"]["metadata"]["name"]
    assert cluster == {"worker": [f"mnist-vae-train-{i}.{service}:2222" for i in range(2)]}
    assert task == {"type": "worker", "index": index}
    assert json.loads(out)["task"]["index"] == index
    assert job["Job"]["spec"]["template"]["spec"]["subdomain"] == service
    assert job["Job"]["metadata"]["name"] == "mnist-vae-train"  # the pods' hostnames: <job name>-<index>
    assert job["Service"]["spec"]["clusterIP"] == "None"
