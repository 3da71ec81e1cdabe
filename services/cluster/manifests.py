"""The Kubernetes manifests that run one experiment: a spec ConfigMap and one Job per stage.

``kubectl apply -f`` of :func:`to_yaml` ``(experiment_manifests(spec, text))`` is the whole
user action. The Jobs expect the base install (``k8s/base``: MinIO, the Pushgateway and the
``flatland-store`` Secret) in the ``flatland`` namespace.

* meshgen and render are Indexed Jobs whose completions are capped by their work items
  (see :mod:`services.experiment.workplan` for which index does which item);
* train is one Job, or with ``cluster.train_nodes > 1`` an Indexed Job of that many pods
  with a headless Service so every pod finds rank 0 for torchrun;
* neuro is one Job;
* every Job waits in an init container (``flatland wait <stage>``) until the store shows
  its inputs complete, so applying all of them at once is correct.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from services.experiment import workplan
from services.common.spec.experiment import ExperimentSpec

SPEC_MOUNT_DIR = "/etc/flatland"
SPEC_FILE = "spec.yaml"
SPEC_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_FILE}"
BASE_NAMESPACE = "flatland"
MINIO_ENDPOINT = f"http://minio.{BASE_NAMESPACE}.svc:9000"
PUSHGATEWAY_URL = f"http://pushgateway.{BASE_NAMESPACE}.svc:9091"
STORE_SECRET = "flatland-store"
STORE_BUCKET = "flatland"
RUN_AS_UID = 10001
BAD_SPEC_EXIT_CODE = 2
TORCHRUN_PORT = 29500
# User-provided data sets (transfer targets, neural recordings) are read from a PersistentVolumeClaim
# the lab creates (k8s/README.md); specs name files under this directory.
USER_DATA_DIR = "/data"
USER_DATA_CLAIM = "flatland-data"

PART_OF = "beyond-flatland"
LABEL_EXPERIMENT = "flatland.io/experiment"
LABEL_STAGE = "flatland.io/stage"
LABEL_ROLE = "flatland.io/role"

# CPU-node defaults; a GPU stage adds one nvidia.com/gpu to its limits.
STAGE_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "meshgen": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    "render": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    "train": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
    "neuro": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}},
}
GPU_STAGES = ("render", "train")
SHM_SIZE = {"train": "8Gi", "neuro": "2Gi"}  # DataLoader workers share batches through /dev/shm


def default_store_url(spec: ExperimentSpec) -> str:
    """The spec's store when it is already S3, else a prefix for this experiment in the cluster bucket."""
    if spec.store.url.startswith("s3://"):
        return spec.store.url
    return f"s3://{STORE_BUCKET}/{spec.name}"


def object_name(experiment: str, suffix: str) -> str:
    """``<experiment>-<suffix>``, shortened with a hash when over 52 characters.

    52 leaves room for the ``-<index>-<random>`` Kubernetes appends to Indexed Job pods
    (hostnames and label values are limited to 63).
    """
    name = f"{experiment}-{suffix}"
    if len(name) <= 52:
        return name
    digest = hashlib.sha256(experiment.encode()).hexdigest()[:6]
    return f"{experiment[: 52 - len(suffix) - 8].rstrip('-')}-{digest}-{suffix}"


def _labels(spec: ExperimentSpec, stage: str | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "flatland",
        LABEL_EXPERIMENT: spec.name,
    }
    if stage is not None:
        labels["app.kubernetes.io/name"] = f"flatland-{stage}"
        labels["app.kubernetes.io/component"] = "experiment-job"
        labels[LABEL_STAGE] = stage
    return labels


def image_for(spec: ExperimentSpec, stage: str) -> str:
    """The stage's image: ``<registry>/<stage>[-gpu]:<tag>`` (GPU variants for render and train when cluster.gpu)."""
    variant = f"{stage}-gpu" if spec.cluster.gpu and stage in GPU_STAGES else stage
    return f"{spec.cluster.image_registry.rstrip('/')}/{variant}:{spec.cluster.image_tag}"


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(spec: ExperimentSpec, stage: str, store_url: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FLATLAND_STORE", "value": store_url},
        {"name": "FLATLAND_S3_ENDPOINT", "value": MINIO_ENDPOINT},
        {"name": "FLATLAND_PUSHGATEWAY", "value": PUSHGATEWAY_URL},
        {"name": "FLATLAND_EXPERIMENT", "value": spec.name},
        # Credentials only by reference: the manifests never hold a secret value.
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": STORE_SECRET, "key": "access-key"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": STORE_SECRET, "key": "secret-key"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
    ]
    if stage == "render":
        env.append({"name": "PYOPENGL_PLATFORM", "value": "egl" if spec.cluster.gpu else "osmesa"})
    return env


def _resources(spec: ExperimentSpec, stage: str) -> dict[str, Any]:
    resources = {k: dict(v) for k, v in STAGE_RESOURCES[stage].items()}
    if spec.cluster.gpu and stage in GPU_STAGES:
        resources["limits"]["nvidia.com/gpu"] = "1"
        resources["requests"]["nvidia.com/gpu"] = "1"
    return resources


def user_data_paths(spec: ExperimentSpec, stage: str) -> list[str]:
    """Paths under ``/data`` that ``stage`` reads (train: transfer targets; neuro: neural data files)."""
    if stage == "train":
        used = {t for transfer in spec.transfer for t in transfer.targets}
        paths = [t.path for t in spec.targets if t.name in used]
    elif stage == "neuro":
        used = {b for scoring in spec.scoring for b in scoring.benchmarks}
        paths = [n.path for n in spec.neural_data if n.name in used]
    else:
        paths = []
    return [p for p in paths if p and (p == USER_DATA_DIR or p.startswith(USER_DATA_DIR + "/"))]


def _pod_spec(spec: ExperimentSpec, stage: str, store_url: str, spec_configmap: str,
              extra_env: list[dict[str, Any]] | None = None, subdomain: str | None = None,
              command: list[str] | None = None, args: list[str] | None = None) -> dict[str, Any]:
    image = image_for(spec, stage)
    env = _env(spec, stage, store_url)
    base_mounts = [
        {"name": "spec", "mountPath": SPEC_MOUNT_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    mounts = list(base_mounts)
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": spec_configmap}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if user_data_paths(spec, stage):
        mounts.append({"name": "user-data", "mountPath": USER_DATA_DIR, "readOnly": True})
        volumes.append({"name": "user-data", "persistentVolumeClaim": {"claimName": USER_DATA_CLAIM, "readOnly": True}})
    if stage in SHM_SIZE:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE[stage]}})
    gpu = spec.cluster.gpu and stage in GPU_STAGES
    wait_env = list(env)
    if gpu:
        # CUDA images say NVIDIA_VISIBLE_DEVICES=all; a container that requests no GPU must not
        # see the node's GPUs through the runtime hook.
        wait_env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    wait = {
        "name": f"wait-{stage}-inputs",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["wait", stage, "--spec", SPEC_PATH, "--timeout", str(spec.cluster.active_deadline_seconds)],
        "env": wait_env,
        "volumeMounts": base_mounts,
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": _container_security(),
    }
    main = {
        "name": stage,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args or ["job", stage, "--spec", SPEC_PATH],
        "env": env + list(extra_env or []),
        "volumeMounts": mounts,
        "resources": _resources(spec, stage),
        "securityContext": _container_security(),
    }
    if command is not None:
        main["command"] = command
    if subdomain is not None:
        main["ports"] = [{"name": "torchrun", "containerPort": TORCHRUN_PORT}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are the Job's backoffLimit
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [wait],
        "containers": [main],
        "volumes": volumes,
    }
    if subdomain is not None:
        pod["subdomain"] = subdomain
    if gpu:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def _job(spec: ExperimentSpec, stage: str, store_url: str, spec_configmap: str, *, completions: int | None = None,
         parallelism: int | None = None, extra_env: list[dict[str, Any]] | None = None,
         subdomain: str | None = None, command: list[str] | None = None, args: list[str] | None = None,
         shard_by_index: bool = True) -> dict[str, Any]:
    labels = _labels(spec, stage)
    env_extra = list(extra_env or [])
    if completions is not None and shard_by_index:
        # Kubernetes sets JOB_COMPLETION_INDEX in Indexed Job pods but not the count; `flatland job`
        # needs both to pick its share (item i -> index i % count).
        env_extra.append({"name": "JOB_COMPLETION_COUNT", "value": str(completions)})
    # The store-access role lets the NetworkPolicies of k8s/base admit these pods to MinIO and the Pushgateway.
    pod_labels = {**labels, LABEL_ROLE: "stage"}
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.cluster.backoff_limit,
        "activeDeadlineSeconds": spec.cluster.active_deadline_seconds,
        "ttlSecondsAfterFinished": spec.cluster.ttl_seconds_after_finished,
        "podFailurePolicy": {
            "rules": [
                # Exit code 2 means a bad spec: retrying cannot help, so fail the whole Job at once.
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [BAD_SPEC_EXIT_CODE]}},
                # Evictions, preemption and node drains are not the program's fault: do not count them.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": _pod_spec(spec, stage, store_url, spec_configmap, env_extra, subdomain, command, args),
        },
    }
    if completions is not None:
        job_spec["completionMode"] = "Indexed"
        job_spec["completions"] = completions
        job_spec["parallelism"] = parallelism if parallelism is not None else completions
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": object_name(spec.name, stage), "namespace": spec.cluster.namespace, "labels": labels},
        "spec": job_spec,
    }


def _train_objects(spec: ExperimentSpec, store_url: str, spec_configmap: str) -> list[dict[str, Any]]:
    nodes = spec.cluster.train_nodes
    if nodes == 1:
        return [_job(spec, "train", store_url, spec_configmap)]
    job_name = object_name(spec.name, "train")
    service_name = object_name(spec.name, "train-ranks")
    # Pod hostnames of an Indexed Job are <job>-<index>; with the subdomain they resolve as
    # <job>-<index>.<service>, so rank 0 is reachable at a stable name.
    torchrun_env = [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "PET_MASTER_ADDR", "value": f"{job_name}-0.{service_name}"},
        {"name": "PET_MASTER_PORT", "value": str(TORCHRUN_PORT)},
        {"name": "PET_NPROC_PER_NODE", "value": "1"},  # one GPU (or one CPU process) per pod
        {"name": "FLATLAND_TRAIN_NODES", "value": str(nodes)},
    ]
    # Every rank does the whole train stage together (DDP), so the Job index is not a work share:
    # torchrun starts one process per GPU and the training loop reads RANK/WORLD_SIZE.
    # A failed rank cannot rejoin a static rendezvous, so a retry restarts that pod only after the
    # others time out; keep cluster.backoff_limit small for multi-node runs.
    job = _job(spec, "train", store_url, spec_configmap, completions=nodes, parallelism=nodes,
               extra_env=torchrun_env, subdomain=service_name, shard_by_index=False,
               command=["torchrun"],
               args=["--module", "services.cli", "job", "train", "--spec", SPEC_PATH, "--index", "0", "--count", "1"])
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name, "namespace": spec.cluster.namespace, "labels": _labels(spec, "train")},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # ranks must find each other before any is "ready"
            "selector": {"batch.kubernetes.io/job-name": job_name},
            "ports": [{"name": "torchrun", "port": TORCHRUN_PORT, "targetPort": TORCHRUN_PORT}],
        },
    }
    # The base install denies all ingress in the namespace; the ranks of this Job must reach each
    # other (rendezvous on TORCHRUN_PORT, then NCCL/gloo on ephemeral ports), and nothing else may.
    ranks_policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": object_name(spec.name, "train-ranks"), "namespace": spec.cluster.namespace,
                     "labels": _labels(spec, "train")},
        "spec": {
            "podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": job_name}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": job_name}}}]}],
        },
    }
    return [service, ranks_policy, job]


def experiment_manifests(spec: ExperimentSpec, spec_text: str, *, store_url: str | None = None) -> list[dict[str, Any]]:
    """The Kubernetes objects that run ``spec``: a ConfigMap with ``spec_text``, then one Job per stage with work.

    Parameters
    ----------
    spec : ExperimentSpec
        The validated experiment (names, work items and ``spec.cluster`` settings come from it).
    spec_text : str
        The spec exactly as the user wrote it; mounted at ``/etc/flatland/spec.yaml``.
    store_url : str, optional
        Store every Job uses (env ``FLATLAND_STORE``); default: :func:`default_store_url`.

    Returns
    -------
    list of dict
        ConfigMap, then meshgen, render, train (plus its headless Service when multi-node)
        and neuro Jobs, each only when the spec gives that stage work.
    """
    if not spec_text.strip():
        raise ValueError("spec_text is empty; pass the YAML the spec was loaded from")
    store_url = store_url or default_store_url(spec)
    if not store_url.startswith("s3://"):
        raise ValueError(f"store_url must be an s3:// URL for the cluster (pods share no disk), got {store_url!r}")
    configmap_name = object_name(spec.name, "spec")
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name, "namespace": spec.cluster.namespace, "labels": _labels(spec, None)},
        "data": {SPEC_FILE: spec_text},
    }]
    meshgen = workplan.meshgen_completions(spec)
    if meshgen:
        objects.append(_job(spec, "meshgen", store_url, configmap_name, completions=meshgen))
    render = workplan.render_completions(spec)
    if render:
        objects.append(_job(spec, "render", store_url, configmap_name, completions=render))
    if spec.pretrain or spec.transfer:
        objects.extend(_train_objects(spec, store_url, configmap_name))
    if spec.scoring:
        objects.append(_job(spec, "neuro", store_url, configmap_name))
    return objects


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded spec) as readable ``|`` blocks; no YAML anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _str_representer)


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML (``---`` between objects), keys in insertion order, ready for ``kubectl apply -f -``."""
    return yaml.dump_all(manifests, Dumper=_BlockStyleDumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True, width=120)
