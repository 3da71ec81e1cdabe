"""Property checks shared by the cluster tests: schema validation and security invariants."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
# Pinned: validate against the schemas of the oldest Kubernetes we support (1.32: native gRPC
# probes, podFailurePolicy and Indexed Jobs are all GA), offline, from kubernetes-validate's
# bundled schemas, in strict mode (unknown fields are errors).
K8S_VERSION = "1.32.0"
RUN_AS_UID_MIN = 1000

# A careful subset of the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1):
# only the fields we use, unknown fields rejected, so a typo is caught without the CRD.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "namespace": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                           "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
            "additionalProperties": False,
        },
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}


def kustomize(target: str) -> list[dict[str, Any]]:
    """``kubectl kustomize k8s/<target>`` parsed; skips (visibly) where kubectl is absent."""
    if KUBECTL is None:
        pytest.skip("kubectl not found on PATH: kustomize builds cannot be checked here")
    result = subprocess.run([KUBECTL, "kustomize", str(REPO / "k8s" / target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize k8s/{target} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_META = {"type": "object", "required": ["name"], "additionalProperties": False,
         "properties": {"name": _NAME, "namespace": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"}]}
# Careful subsets of Kueue's v1beta1 CRDs (kueue.x-k8s.io): the fields our examples use,
# unknown fields rejected, so a typo is caught without the CRDs.
KUEUE_SCHEMAS: dict[str, dict[str, Any]] = {
    "ResourceFlavor": {"type": "object", "required": ["apiVersion", "kind", "metadata"], "additionalProperties": False,
                       "properties": {"apiVersion": {"const": "kueue.x-k8s.io/v1beta1"}, "kind": {"const": "ResourceFlavor"},
                                      "metadata": _META, "spec": {"type": "object", "additionalProperties": False, "properties": {
                                          "nodeLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                          "tolerations": {"type": "array"}}}}},
    "ClusterQueue": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
                     "properties": {"apiVersion": {"const": "kueue.x-k8s.io/v1beta1"}, "kind": {"const": "ClusterQueue"},
                                    "metadata": _META, "spec": {
                                        "type": "object", "required": ["resourceGroups"], "additionalProperties": False,
                                        "properties": {
                                            "namespaceSelector": {"type": "object"},
                                            "queueingStrategy": {"enum": ["BestEffortFIFO", "StrictFIFO"]},
                                            "resourceGroups": {"type": "array", "minItems": 1, "items": {
                                                "type": "object", "required": ["coveredResources", "flavors"], "additionalProperties": False,
                                                "properties": {
                                                    "coveredResources": {"type": "array", "items": {"type": "string"}},
                                                    "flavors": {"type": "array", "items": {
                                                        "type": "object", "required": ["name", "resources"], "additionalProperties": False,
                                                        "properties": {"name": _NAME, "resources": {"type": "array", "items": {
                                                            "type": "object", "required": ["name", "nominalQuota"], "additionalProperties": False,
                                                            "properties": {"name": {"type": "string"}, "nominalQuota": _QUANTITY}}}}}}}}}}}}},
    "LocalQueue": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
                   "properties": {"apiVersion": {"const": "kueue.x-k8s.io/v1beta1"}, "kind": {"const": "LocalQueue"},
                                  "metadata": _META, "spec": {"type": "object", "required": ["clusterQueue"], "additionalProperties": False,
                                                              "properties": {"clusterQueue": _NAME}}}},
}


def validate_workflow(obj: dict[str, Any]) -> None:
    """An Argo Workflow against hera's models (generated from Argo's OpenAPI schema), offline.

    hera's models ignore unknown fields, so the object must also survive a round trip
    unchanged: a misspelt or misplaced field is dropped and fails the comparison.
    """
    from hera.workflows.models import Workflow

    where = f"Workflow/{obj.get('metadata', {}).get('name')}"
    try:
        model = Workflow.model_validate(obj)
    except Exception as exc:  # pydantic.ValidationError
        raise AssertionError(f"{where} does not validate against Argo's model: {exc}") from None
    back = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert back == obj, f"{where}: fields Argo's model does not know were dropped"


JOBSET_SCHEMA_FILE = Path(__file__).parent / "schemas" / "jobset-v1alpha2.json"


def _sdk_model(value: Any, kind: str, where: str) -> Any:
    """Build the OpenAPI-generated SDK model ``kind`` from ``value``, strictly.

    Walks the model's ``openapi_types``/``attribute_map`` (kubeflow-training's models, and the
    kubernetes client's for the pod template inside): an unknown field or a wrong type fails,
    and each model's constructor runs its own client-side checks (required fields, enums).
    """
    import kubernetes.client.models as k8s_models
    from kubeflow.training import models as kf_models

    if kind.startswith("list["):
        assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
        return [_sdk_model(v, kind[5:-1], f"{where}[{i}]") for i, v in enumerate(value)]
    if kind.startswith("dict("):
        assert isinstance(value, dict), f"{where}: expected a mapping, got {value!r}"
        inner = kind[5:-1].split(", ", 1)[1]
        return {k: _sdk_model(v, inner, f"{where}.{k}") for k, v in value.items()}
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if kind in simple:
        ok = isinstance(value, simple[kind]) and not (kind == "int" and isinstance(value, bool))
        assert ok, f"{where}: expected {kind}, got {value!r}"
        return value
    if kind in ("object", "Quantity", "datetime"):
        return value
    cls = getattr(kf_models, kind, None) or getattr(k8s_models, kind, None)
    assert cls is not None, f"{where}: no SDK model {kind}"
    assert isinstance(value, dict), f"{where}: expected an object ({kind}), got {value!r}"
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    assert not unknown, f"{where}: {kind} has no field(s) {unknown}"
    kwargs = {by_json[k]: _sdk_model(v, cls.openapi_types[by_json[k]], f"{where}.{k}") for k, v in value.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise AssertionError(f"{where}: {kind}: {exc}") from None


def validate_pytorchjob(obj: dict[str, Any]) -> None:
    """A PyTorchJob against the kubeflow-training SDK's models, and its pod templates strictly
    against the Kubernetes schema (as the pod template of a core ``PodTemplate``)."""
    where = f"PyTorchJob/{obj.get('metadata', {}).get('name') or obj.get('metadata', {}).get('generateName')}"
    assert obj.get("apiVersion") == "kubeflow.org/v1", f"{where}: apiVersion {obj.get('apiVersion')!r}"
    _sdk_model(obj, "KubeflowOrgV1PyTorchJob", where)
    for replica, spec in obj["spec"]["pytorchReplicaSpecs"].items():
        assert replica in ("Master", "Worker"), f"{where}: replica type {replica!r}"
        validate_object({"apiVersion": "v1", "kind": "PodTemplate",
                         "metadata": {"name": f"pytorchjob-{replica.lower()}"}, "template": spec["template"]})


def validate_jobset(obj: dict[str, Any]) -> None:
    """A JobSet against the vendored JobSet CRD schema (strict), each replicated Job's spec
    strictly against the Kubernetes schema."""
    import json

    schema = json.loads(JOBSET_SCHEMA_FILE.read_text())
    jsonschema.validate(obj, schema)
    for rj in obj["spec"]["replicatedJobs"]:
        validate_object({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"jobset-{rj['name']}"},
                         "spec": rj["template"]["spec"]})


def validate_object(obj: dict[str, Any]) -> None:
    """Strict offline schema validation; CRD objects against their models or bundled subset schemas."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("kind") == "PyTorchJob":
        validate_pytorchjob(obj)
        return
    if obj.get("apiVersion", "").startswith("jobset.x-k8s.io/"):
        assert obj["kind"] == "JobSet", f"{where}: no schema for this JobSet kind"
        validate_jobset(obj)
        return
    if obj.get("apiVersion", "").startswith("argoproj.io/"):
        assert obj["kind"] == "Workflow", f"{where}: no schema for this Argo kind"
        validate_workflow(obj)
        return
    if obj.get("apiVersion", "").startswith("kueue.x-k8s.io/"):
        assert obj["kind"] in KUEUE_SCHEMAS, f"{where}: no schema for this Kueue kind"
        jsonschema.validate(obj, KUEUE_SCHEMAS[obj["kind"]])
        return
    if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        assert obj["kind"] == "ServiceMonitor", f"{where}: no schema for this CRD kind"
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{where} is not a valid {K8S_VERSION} object at {list(exc.path)}: {exc.message}") from None


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload object (Deployment, StatefulSet, Job, CronJob), if any."""
    kind = obj["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield obj["spec"]
    elif kind == "PyTorchJob":
        for replica in obj["spec"]["pytorchReplicaSpecs"].values():
            yield replica["template"]["spec"]
    elif kind == "JobSet":
        for rj in obj["spec"]["replicatedJobs"]:
            yield rj["template"]["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def check_pod_security(obj: dict[str, Any]) -> None:
    """Every container: non-root, read-only root FS, no escalation, no capabilities, RuntimeDefault seccomp."""
    name = f"{obj['kind']}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}"
    for pod in pod_specs(obj):
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, f"{name}: pod securityContext.runAsNonRoot must be true"
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccomp must be RuntimeDefault"
        if pod.get("serviceAccountName", "").endswith("-release"):
            # The jobs engine's release step creates the next stage's Job: the one pod with a token.
            assert pod.get("automountServiceAccountToken") is True and not pod.get("hostNetwork"), name
        else:
            assert pod.get("automountServiceAccountToken") is False, f"{name}: no pod here needs the API token"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), f"{name}: host namespaces"
        mounted_tmp = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for c in containers(pod):
            ctx = c.get("securityContext", {})
            cname = f"{name} container {c['name']}"
            uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
            assert uid is not None and uid >= RUN_AS_UID_MIN or uid == 65534, f"{cname}: runAsUser {uid} (need a non-root uid)"
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, f"{cname}: runAsNonRoot"
            assert ctx.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem must be true"
            assert ctx.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation must be false"
            assert ctx.get("privileged") in (None, False), f"{cname}: privileged"
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: capabilities must drop ALL"
            assert not ctx.get("capabilities", {}).get("add"), f"{cname}: adds capabilities"
            image = c["image"]
            assert re.search(r":[^/]+$", image) and not image.endswith(":latest"), f"{cname}: image {image} is not pinned"
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if c["image"].startswith("ghcr.io/beyond-flatland/") or "minio" in c["image"]:
                # Read-only root: Python, matplotlib, mc and MinIO write their scratch under /tmp.
                assert mounts.get("/tmp") in mounted_tmp, f"{cname}: needs an emptyDir at /tmp"


SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL)", re.IGNORECASE)
ONLY_REFERENCES = re.compile(r"^(\$\([A-Z_][A-Z0-9_]*\)|[^$])*$")
URL_USERINFO = re.compile(r"://([^/@\s]+)@")


def check_no_secret_values(obj: dict[str, Any]) -> None:
    """No Secret carries data, and no env var spells out a credential (only secretKeyRef / $(REF))."""
    name = f"{obj['kind']}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}"
    if obj["kind"] == "Secret":
        assert not obj.get("data") and not obj.get("stringData"), f"{name}: manifests must not carry secret values"
    for pod in pod_specs(obj):
        for c in containers(pod):
            for env in c.get("env", []):
                where = f"{name} container {c['name']} env {env['name']}"
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{where}: credentials must come from a secretKeyRef"
                    ref = env.get("valueFrom", {})
                    assert "secretKeyRef" in ref, f"{where}: credentials must come from a secretKeyRef, got {ref}"
                value = env.get("value", "")
                for userinfo in URL_USERINFO.findall(value):
                    parts = re.sub(r"\$\([A-Z_][A-Z0-9_]*\)", "", userinfo)
                    assert parts in ("", ":"), f"{where}: URL holds literal credentials ({value})"
            for source in c.get("envFrom", []):
                assert "secretRef" in source or "configMapRef" in source
    text = yaml.safe_dump(obj)
    assert "BEGIN PRIVATE KEY" not in text and "AKIA" not in text, f"{name}: looks like a literal credential"


def check_job_bounded(obj: dict[str, Any]) -> None:
    name = obj["metadata"].get("name") or obj["metadata"].get("generateName")
    if obj["kind"] == "PyTorchJob":
        run = obj["spec"]["runPolicy"]
        assert isinstance(run.get("activeDeadlineSeconds"), int) and run["activeDeadlineSeconds"] > 0, f"{name}: no deadline"
        assert isinstance(run.get("backoffLimit"), int) and 0 <= run["backoffLimit"] <= 100, f"{name}: no backoffLimit"
        assert isinstance(run.get("ttlSecondsAfterFinished"), int), f"{name}: no ttlSecondsAfterFinished"
        return
    if obj["kind"] == "JobSet":
        assert isinstance(obj["spec"].get("ttlSecondsAfterFinished"), int), f"{name}: no ttlSecondsAfterFinished"
        assert 0 <= obj["spec"]["failurePolicy"]["maxRestarts"] <= 100, f"{name}: unbounded restarts"
        for rj in obj["spec"]["replicatedJobs"]:
            deadline = rj["template"]["spec"].get("activeDeadlineSeconds")
            assert isinstance(deadline, int) and deadline > 0, f"{name}/{rj['name']}: no deadline"
        return
    if obj["kind"] != "Job":
        return
    spec = obj["spec"]
    name = obj["metadata"]["name"]
    assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0, f"Job {name}: no deadline"
    retries = spec.get("backoffLimitPerIndex", spec.get("backoffLimit"))
    assert isinstance(retries, int) and 0 <= retries <= 100, f"Job {name}: no backoffLimit(PerIndex)"
    if "backoffLimitPerIndex" in spec:
        assert spec.get("completionMode") == "Indexed", f"Job {name}: backoffLimitPerIndex needs an Indexed Job"
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int), f"Job {name}: no ttlSecondsAfterFinished"


def gpu_containers(objs: list[dict[str, Any]]) -> set[str]:
    """Names of containers that request or limit nvidia.com/gpu."""
    found = set()
    for obj in objs:
        for pod in pod_specs(obj):
            for c in containers(pod):
                res = c.get("resources", {})
                if "nvidia.com/gpu" in res.get("limits", {}) or "nvidia.com/gpu" in res.get("requests", {}):
                    found.add(c["name"])
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def parse_quantity(q: str | int | float) -> float:
    """Kubernetes quantity → float (CPU in cores, memory in bytes)."""
    text = str(q)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)
