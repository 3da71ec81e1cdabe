"""The Kubernetes manifests that run one experiment as plain Jobs (the ``jobs`` engine).

``kubectl apply -f`` of :func:`to_yaml` ``(experiment_manifests(spec, text))`` is the whole
user action. The Jobs expect the base install (``k8s/base``: MinIO, the Pushgateway and the
``flatland-store`` Secret) in the ``flatland`` namespace. (The ``argo`` engine is
:mod:`services.cluster.argo`.)

* meshgen and render are Indexed Jobs whose completions are capped by their work items
  (see :mod:`services.experiment.workplan` for which index does which item), each index
  retried on its own (``backoffLimitPerIndex``, ``maxFailedIndexes``);
* train is one Job, or with ``cluster.train_nodes > 1`` an Indexed Job of that many pods
  with a headless Service so every pod finds rank 0 for torchrun's c10d rendezvous;
* neuro is one Job;
* no pod waits holding resources: the first stage's Job is applied as is; every later
  stage's Job sits in the spec ConfigMap, and a tiny CPU "release" Job (``flatland k8s
  release``: 50m CPU, no GPU) waits until the store shows that stage's inputs complete and
  only then creates it. So a Job's ``activeDeadlineSeconds`` counts from its stage's start.
* with ``cluster.queue`` every Job carries ``kueue.x-k8s.io/queue-name`` and is created
  suspended; Kueue admits it (all pods of a multi-node train together).
"""

from __future__ import annotations

import copy
import hashlib
import re
from decimal import Decimal
from typing import Any

import yaml

from services.cluster import training
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
TORCHRUN_PORT = training.TORCHRUN_PORT
# User-provided data sets (transfer targets, neural recordings) are read from a PersistentVolumeClaim
# the lab creates (k8s/README.md); specs name files under this directory.
USER_DATA_DIR = "/data"
USER_DATA_CLAIM = "flatland-data"

RELEASE_ACCOUNT = "flatland-release"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
STAGES = ("meshgen", "render", "train", "neuro")

PART_OF = "beyond-flatland"
LABEL_EXPERIMENT = "flatland.io/experiment"
LABEL_STAGE = "flatland.io/stage"
LABEL_ROLE = "flatland.io/role"

GPU_STAGES = ("render", "train")
SHM_STAGES = ("train", "neuro")  # DataLoader workers share batches through /dev/shm
# The release step: it only polls the store and makes one API call.
RELEASE_RESOURCES = {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def default_store_url(spec: ExperimentSpec) -> str:
    """The spec's store when it is already S3, else a prefix for this experiment in the cluster bucket."""
    if spec.store.url.startswith("s3://"):
        return spec.store.url
    return f"s3://{STORE_BUCKET}/{spec.name}"


def object_name(experiment: str, suffix: str, limit: int = 52) -> str:
    """``<experiment>-<suffix>``, shortened with a hash when over ``limit`` (52) characters.

    52 leaves room for the ``-<index>-<random>`` Kubernetes appends to Indexed Job pods
    (hostnames and label values are limited to 63).
    """
    name = f"{experiment}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(experiment.encode()).hexdigest()[:6]
    return f"{experiment[: limit - len(suffix) - 8].rstrip('-')}-{digest}-{suffix}"


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


def uses_gpu(spec: ExperimentSpec, stage: str) -> bool:
    return spec.cluster.gpu and stage in GPU_STAGES and spec.cluster.stage(stage).gpus > 0


def image_name(spec: ExperimentSpec, stage: str, *, gpu: bool | None = None) -> str:
    """The image's short name: ``<stage>`` or ``<stage>-gpu`` (what ``make images`` builds)."""
    gpu = uses_gpu(spec, stage) if gpu is None else gpu
    return f"{stage}-gpu" if gpu else stage


def image_for(spec: ExperimentSpec, stage: str, *, gpu: bool | None = None,
              digests: dict[str, str] | None = None) -> str:
    """The stage's image: ``<registry>/<stage>[-gpu]:<tag>``, or ``…@sha256:…`` when ``digests`` pins it.

    GPU variants for render and train when cluster.gpu (and the stage asks for GPUs);
    ``digests`` maps the short name (``render-gpu``) to its ``sha256:`` digest.
    """
    name = image_name(spec, stage, gpu=gpu)
    repo = f"{spec.cluster.image_registry.rstrip('/')}/{name}"
    if digests is not None:
        if name not in digests:
            raise ValueError(f"image digests: no digest for {name!r} (have: {', '.join(sorted(digests)) or 'none'})")
        return f"{repo}@{digests[name]}"
    return f"{repo}:{spec.cluster.image_tag}"


def pull_policy(image: str) -> str:
    """``IfNotPresent`` for an image pinned by digest (its content cannot change), else ``Always``.

    A tag can be pushed again with other content; ``Always`` makes the kubelet resolve it on
    every pod start (a manifest request; cached layers are not pulled again), so no node runs
    a stale image under a reused tag. Pin with ``--image-digests`` to skip even that.
    """
    return "IfNotPresent" if "@sha256:" in image else "Always"


def load_image_digests(text: str) -> dict[str, str]:
    """Parse an ``--image-digests`` file: YAML/JSON mapping ``name: sha256:<64 hex>``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"image digests: not YAML/JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError("image digests: expected a mapping of image name -> sha256:<digest>")
    for name, digest in data.items():
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"image digests: {name}: {digest!r} is not sha256:<64 hex digits>")
    return {str(k): v for k, v in data.items()}


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


def stage_resources(spec: ExperimentSpec, stage: str) -> dict[str, Any]:
    """Requests and limits of the stage's main container, from ``cluster.<stage>``.

    Memory is requested and limited alike (a pod is never OOM-killed for using what it
    asked for); CPU has no limit (no throttling of idle cores); GPUs per pod when used.
    """
    settings = spec.cluster.stage(stage)
    resources: dict[str, Any] = {"requests": {"cpu": settings.cpu, "memory": settings.memory},
                                 "limits": {"memory": settings.memory}}
    if uses_gpu(spec, stage):
        resources["limits"][GPU_RESOURCE] = str(settings.gpus)
        resources["requests"][GPU_RESOURCE] = str(settings.gpus)
    return resources


def scheduling(spec: ExperimentSpec, stage: str) -> dict[str, Any]:
    """``nodeSelector`` and ``tolerations`` of the stage's pods (GPU stages tolerate the GPU taint)."""
    settings = spec.cluster.stage(stage)
    out: dict[str, Any] = {}
    if settings.node_selector:
        out["nodeSelector"] = dict(settings.node_selector)
    tolerations = [t.model_dump(exclude_none=True) for t in settings.tolerations]
    if uses_gpu(spec, stage) and not any(t["key"] == GPU_RESOURCE for t in tolerations):
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        out["tolerations"] = tolerations
    return out


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "fsGroup": RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


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


def stage_volumes(spec: ExperimentSpec, stage: str, spec_configmap: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(volumeMounts, volumes)`` of a stage container: the spec, /tmp, user data where read, /dev/shm where used."""
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_MOUNT_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": spec_configmap}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if user_data_paths(spec, stage):
        mounts.append({"name": "user-data", "mountPath": USER_DATA_DIR, "readOnly": True})
        volumes.append({"name": "user-data", "persistentVolumeClaim": {"claimName": USER_DATA_CLAIM, "readOnly": True}})
    if stage in SHM_STAGES:
        # Memory-backed: what workers put there counts against the pod's memory limit anyway.
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.cluster.stage(stage).memory}})
    return mounts, volumes


def stage_env(spec: ExperimentSpec, stage: str, store_url: str) -> list[dict[str, Any]]:
    return _env(spec, stage, store_url)


def container_security() -> dict[str, Any]:
    return _container_security()


def _pod_spec(spec: ExperimentSpec, stage: str, store_url: str, spec_configmap: str,
              extra_env: list[dict[str, Any]] | None = None, subdomain: str | None = None,
              command: list[str] | None = None, args: list[str] | None = None,
              digests: dict[str, str] | None = None) -> dict[str, Any]:
    mounts, volumes = stage_volumes(spec, stage, spec_configmap)
    image = image_for(spec, stage, digests=digests)
    main = {
        "name": stage,
        "image": image,
        "imagePullPolicy": pull_policy(image),
        "args": args or ["job", stage, "--spec", SPEC_PATH],
        "env": _env(spec, stage, store_url) + list(extra_env or []),
        "volumeMounts": mounts,
        "resources": stage_resources(spec, stage),
        "securityContext": _container_security(),
    }
    if command is not None:
        main["command"] = command
    if subdomain is not None:
        main["ports"] = [{"name": "torchrun", "containerPort": TORCHRUN_PORT}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are the Job's
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [main],
        "volumes": volumes,
    }
    if subdomain is not None:
        pod["subdomain"] = subdomain
    pod.update(scheduling(spec, stage))
    return pod


def _failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # Exit code 2 means a bad spec: retrying cannot help, so fail the whole Job at once.
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [BAD_SPEC_EXIT_CODE]}},
            # Evictions, preemption and node drains are not the program's fault: do not count them.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _job_metadata(spec: ExperimentSpec, stage: str, name: str) -> dict[str, Any]:
    labels = _labels(spec, stage)
    if spec.cluster.queue:
        labels[QUEUE_LABEL] = spec.cluster.queue
    return {"name": name, "namespace": spec.cluster.namespace, "labels": labels}


def _job(spec: ExperimentSpec, stage: str, store_url: str, spec_configmap: str, *, completions: int | None = None,
         parallelism: int | None = None, extra_env: list[dict[str, Any]] | None = None,
         subdomain: str | None = None, command: list[str] | None = None, args: list[str] | None = None,
         shard_by_index: bool = True, digests: dict[str, str] | None = None) -> dict[str, Any]:
    labels = _labels(spec, stage)
    settings = spec.cluster.stage(stage)
    env_extra = list(extra_env or [])
    if completions is not None and shard_by_index:
        # Kubernetes sets JOB_COMPLETION_INDEX in Indexed Job pods but not the count; `flatland job`
        # needs both to pick its share (item i -> index i % count).
        env_extra.append({"name": "JOB_COMPLETION_COUNT", "value": str(completions)})
    # The store-access role lets the NetworkPolicies of k8s/base admit these pods to MinIO and the Pushgateway.
    pod_labels = {**labels, LABEL_ROLE: "stage"}
    job_spec: dict[str, Any] = {}
    if completions is not None and shard_by_index:
        # Each index (a share of shards or classes) retries on its own: bad shards do not use up
        # the retries of the others.
        job_spec["backoffLimitPerIndex"] = settings.backoff_limit_per_index
        if settings.max_failed_indexes is not None:
            job_spec["maxFailedIndexes"] = settings.max_failed_indexes
    else:
        job_spec["backoffLimit"] = spec.cluster.backoff_limit
    job_spec.update({
        # The Job exists only once its inputs are complete (release step), so this counts the work alone.
        "activeDeadlineSeconds": spec.cluster.deadline(stage),
        "ttlSecondsAfterFinished": spec.cluster.ttl_seconds_after_finished,
        "podFailurePolicy": _failure_policy(),
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": _pod_spec(spec, stage, store_url, spec_configmap, env_extra, subdomain, command, args, digests),
        },
    })
    if spec.cluster.queue:
        job_spec["suspend"] = True  # Kueue unsuspends it on admission
    if completions is not None:
        job_spec["completionMode"] = "Indexed"
        job_spec["completions"] = completions
        job_spec["parallelism"] = parallelism if parallelism is not None else completions
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _job_metadata(spec, stage, object_name(spec.name, stage)),
            "spec": job_spec}


def _train_objects(spec: ExperimentSpec, store_url: str, spec_configmap: str,
                   digests: dict[str, str] | None) -> list[dict[str, Any]]:
    nodes = spec.cluster.train_nodes
    gpus = spec.cluster.train.gpus if uses_gpu(spec, "train") else 0
    if nodes == 1:
        if gpus > 1:  # one pod, every GPU of it: torchrun on one node
            return [_job(spec, "train", store_url, spec_configmap, command=["torchrun"], digests=digests,
                         args=["--standalone", "--nproc-per-node", str(gpus), "--module", "services.cli",
                               "job", "train", "--spec", SPEC_PATH, "--index", "0", "--count", "1"])]
        return [_job(spec, "train", store_url, spec_configmap, digests=digests)]
    if spec.cluster.multinode != "indexed":  # a training operator runs the ranks
        return rank_group(spec, ["--index", "0", "--count", "1"], store_url, spec_configmap, suffix="train", digests=digests)
    job_name = object_name(spec.name, "train")
    service_name = object_name(spec.name, "train-ranks")
    # Pod hostnames of an Indexed Job are <job>-<index>; with the subdomain they resolve as
    # <job>-<index>.<service>, so rank 0's agent (which hosts the c10d store) has a stable name.
    torchrun_env = [
        {"name": "PET_NNODES", "value": str(nodes)},
        # Elastic c10d rendezvous: a rank that fails restarts every worker of the group
        # (PET_MAX_RESTARTS times) instead of leaving the others waiting on a static rendezvous.
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": f"{job_name}-0.{service_name}:{TORCHRUN_PORT}"},
        {"name": "PET_RDZV_ID", "value": job_name},
        {"name": "PET_MAX_RESTARTS", "value": str(spec.cluster.backoff_limit)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(gpus, 1))},  # one process per GPU (or one on CPU)
        {"name": "FLATLAND_TRAIN_NODES", "value": str(nodes)},
    ]
    # Every rank does the whole train stage together (DDP), so the Job index is not a work share:
    # torchrun starts one process per GPU and the training loop reads RANK/WORLD_SIZE.
    job = _job(spec, "train", store_url, spec_configmap, completions=nodes, parallelism=nodes,
               extra_env=torchrun_env, subdomain=service_name, shard_by_index=False, digests=digests,
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


def rank_group(spec: ExperimentSpec, tail: list[str], store_url: str, configmap: str, *, suffix: str,
               for_argo: bool = False, digests: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``[NetworkPolicy, PyTorchJob | JobSet]`` of one multi-node train run, named ``<experiment>-<suffix>``.

    ``tail`` ends the train job's command line (``--part``, ``--index``, ``--count``). Under
    Argo (``for_argo``) a PyTorchJob gets a generated name (``<name>-xxxxx``) and Workers that
    are not restarted: a failed rank fails the step, and Argo's retry creates a fresh job, so
    the whole group restarts. See :mod:`services.cluster.training`.
    """
    mode = spec.cluster.multinode
    name = object_name(spec.name, suffix, limit=training.GROUP_NAME_LIMIT)
    procs = max(spec.cluster.train.gpus if uses_gpu(spec, "train") else 0, 1)  # one process per GPU (or one on CPU)
    args = ["--module", "services.cli", "job", "train", "--spec", SPEC_PATH, *tail]
    nodes_env = [{"name": "FLATLAND_TRAIN_NODES", "value": str(spec.cluster.train_nodes)}]
    if mode == "pytorchjob":
        pod = _pod_spec(spec, "train", store_url, configmap, nodes_env, command=["torchrun"], args=args, digests=digests)
        metadata = _job_metadata(spec, "train", name)
        if for_argo:
            metadata = {"generateName": f"{name}-", **{k: v for k, v in metadata.items() if k != "name"}}
        obj = training.pytorchjob(spec, pod, {**_labels(spec, "train"), LABEL_ROLE: "stage"}, metadata, group=name,
                                  procs_per_pod=procs, restart_policy="Never" if for_argo else "ExitCode")
    elif mode == "jobset":
        job = _job(spec, "train", store_url, configmap, completions=spec.cluster.train_nodes,
                   parallelism=spec.cluster.train_nodes, extra_env=training.jobset_env(spec, name, procs) + nodes_env,
                   shard_by_index=False, digests=digests, command=["torchrun"], args=args)
        obj = training.jobset(spec, job, _job_metadata(spec, "train", name), _labels(spec, "train"))
    else:
        raise ValueError(f"cluster.multinode: {mode!r} is not run by a training operator (use pytorchjob or jobset)")
    return [training.ranks_policy(spec, name, object_name(spec.name, f"{suffix}-ranks"), _labels(spec, "train")), obj]


def released_key(stage: str) -> str:
    """ConfigMap key holding the Job a release step creates for ``stage``."""
    return f"{stage}-job.yaml"


def _release_rules(spec: ExperimentSpec, stages: list[str]) -> list[dict[str, Any]]:
    """Create and read Jobs; and the training operator's kind when a released train runs on one."""
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]}]
    if "train" in stages and spec.cluster.train_nodes > 1 and spec.cluster.multinode in training.OPERATOR_RESOURCES:
        group, resource = training.OPERATOR_RESOURCES[spec.cluster.multinode]
        rules.append({"apiGroups": [group], "resources": [resource], "verbs": ["create", "get"]})
    return rules


def _release_objects(spec: ExperimentSpec, stages: list[str], store_url: str, configmap: str,
                     digests: dict[str, str] | None) -> list[dict[str, Any]]:
    """The release steps: per gated stage a tiny CPU Job that waits for the inputs, then creates the stage's Job.

    They share one ServiceAccount whose Role may only create and read Jobs in the namespace.
    """
    account = object_name(spec.name, "release")
    ns = spec.cluster.namespace
    labels = _labels(spec, None)
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": ns, "labels": labels},
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": account, "namespace": ns, "labels": labels},
         "rules": _release_rules(spec, stages)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": account, "namespace": ns, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]},
    ]
    for stage in stages:
        name = object_name(spec.name, f"{stage}-release")
        pod_labels = {**_labels(spec, stage), LABEL_ROLE: "stage", "app.kubernetes.io/component": "release"}
        container = {
            "name": "release",
            # The stage's CPU image has what `flatland wait <stage>` reads; no GPU image, no GPU.
            "image": image_for(spec, stage, gpu=False, digests=digests),
            "imagePullPolicy": pull_policy(image_for(spec, stage, gpu=False, digests=digests)),
            "args": ["k8s", "release", stage, "--spec", SPEC_PATH, "--job", f"{SPEC_MOUNT_DIR}/{released_key(stage)}",
                     "--timeout", str(spec.cluster.wait_timeout_seconds)],
            "env": _env(spec, "meshgen", store_url),
            "volumeMounts": [{"name": "spec", "mountPath": SPEC_MOUNT_DIR, "readOnly": True},
                             {"name": "tmp", "mountPath": "/tmp"}],
            "resources": copy.deepcopy(RELEASE_RESOURCES),
            "securityContext": _container_security(),
        }
        metadata = _job_metadata(spec, stage, name)
        metadata["labels"]["app.kubernetes.io/component"] = "release"
        job_spec: dict[str, Any] = {
            "backoffLimit": spec.cluster.backoff_limit,
            # Waiting is all it does: it may wait as long as the earlier stages may run.
            "activeDeadlineSeconds": spec.cluster.wait_timeout_seconds + 600,
            "ttlSecondsAfterFinished": spec.cluster.ttl_seconds_after_finished,
            "podFailurePolicy": _failure_policy(),
            "template": {"metadata": {"labels": pod_labels}, "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": account,
                "automountServiceAccountToken": True,  # the one pod that talks to the API: create its Job
                "enableServiceLinks": False,
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": [{"name": "spec", "configMap": {"name": configmap}}, {"name": "tmp", "emptyDir": {}}],
            }},
        }
        if spec.cluster.queue:
            job_spec["suspend"] = True
        objects.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec})
    return objects


def stage_objects(spec: ExperimentSpec, store_url: str, configmap: str,
                  digests: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per stage with work, in pipeline order: the objects that run it (its Job last)."""
    out: dict[str, list[dict[str, Any]]] = {}
    meshgen = workplan.meshgen_completions(spec)
    if meshgen:
        out["meshgen"] = [_job(spec, "meshgen", store_url, configmap, completions=meshgen, digests=digests)]
    render = workplan.render_completions(spec)
    if render:
        out["render"] = [_job(spec, "render", store_url, configmap, completions=render, digests=digests)]
    if spec.pretrain or spec.transfer:
        out["train"] = _train_objects(spec, store_url, configmap, digests)
    if spec.scoring:
        out["neuro"] = [_job(spec, "neuro", store_url, configmap, digests=digests)]
    return out


def experiment_manifests(spec: ExperimentSpec, spec_text: str, *, store_url: str | None = None,
                         image_digests: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The Kubernetes objects that run ``spec``: a ConfigMap, the first stage's Job, release steps for the rest.

    Parameters
    ----------
    spec : ExperimentSpec
        The validated experiment (names, work items and ``spec.cluster`` settings come from it).
    spec_text : str
        The spec exactly as the user wrote it; mounted at ``/etc/flatland/spec.yaml``.
    store_url : str, optional
        Store every Job uses (env ``FLATLAND_STORE``); default: :func:`default_store_url`.
    image_digests : dict, optional
        Image short name -> ``sha256:`` digest; every image is then pulled by digest.

    Returns
    -------
    list of dict
        ConfigMap (the spec, and under ``<stage>-job.yaml`` each later stage's Job), the first
        stage's Job, then per later stage its other objects (train's headless Service and
        NetworkPolicy when multi-node) and its release Job, with the release ServiceAccount
        and Role. Stages without work get nothing.

    Raises
    ------
    ValueError
        Bad ``spec_text``/``store_url``, a missing digest, or (with ``cluster.node``) a pod
        that cannot fit on a node.
    """
    if not spec_text.strip():
        raise ValueError("spec_text is empty; pass the YAML the spec was loaded from")
    store_url = store_url or default_store_url(spec)
    if not store_url.startswith("s3://"):
        raise ValueError(f"store_url must be an s3:// URL for the cluster (pods share no disk), got {store_url!r}")
    configmap_name = object_name(spec.name, "spec")
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name, "namespace": spec.cluster.namespace, "labels": _labels(spec, None)},
        "data": {SPEC_FILE: spec_text},
    }
    objects: list[dict[str, Any]] = [configmap]
    stages = stage_objects(spec, store_url, configmap_name, image_digests)
    gated: list[str] = []
    for i, (stage, objs) in enumerate(stages.items()):
        *others, job = objs
        objects.extend(others)
        if i == 0:
            objects.append(job)
        else:
            configmap["data"][released_key(stage)] = to_yaml([job])
            gated.append(stage)
    if gated:
        objects.extend(_release_objects(spec, gated, store_url, configmap_name, image_digests))
    if spec.cluster.node is not None:
        check_fits_node(stages, spec.cluster.node.cpu, spec.cluster.node.memory, spec.cluster.node.gpus)
    return objects


def pod_request(pod: dict[str, Any]) -> dict[str, Decimal]:
    """What the scheduler reserves for a pod: the sum of its containers (or the largest init container)."""
    from kubernetes.utils import parse_quantity

    def total(containers: list[dict[str, Any]], key: str) -> Decimal:
        return sum((parse_quantity(c.get("resources", {}).get("requests", {}).get(key, "0")) for c in containers), Decimal(0))

    return {key: max([total(pod["containers"], key)] + [total([c], key) for c in pod.get("initContainers", [])])
            for key in ("cpu", "memory", GPU_RESOURCE)}


def fit_problems(pod: dict[str, Any], cpu: str, memory: str, gpus: int) -> list[str]:
    """Why ``pod`` cannot fit on a node with this much allocatable (empty list: it fits)."""
    from kubernetes.utils import parse_quantity

    need = pod_request(pod)
    have = {"cpu": parse_quantity(cpu), "memory": parse_quantity(memory), GPU_RESOURCE: Decimal(gpus)}
    return [f"{key} request {need[key]} > node's {have[key]}" for key in have if need[key] > have[key]]


def workload_pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs a workload object creates: a Job's, a PyTorchJob's replicas', a JobSet's Jobs'."""
    kind = obj.get("kind")
    if kind == "Job":
        return [obj["spec"]["template"]["spec"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if kind == "JobSet":
        return [r["template"]["spec"]["template"]["spec"] for r in obj["spec"]["replicatedJobs"]]
    return []


def check_fits_node(stages: dict[str, list[dict[str, Any]]], cpu: str, memory: str, gpus: int) -> None:
    for stage, objs in stages.items():
        for obj in objs:
            for pod in workload_pods(obj):
                problems = fit_problems(pod, cpu, memory, gpus)
                if problems:
                    raise ValueError(f"cluster.{stage}: a {stage} pod cannot fit on a node of cluster.node "
                                     f"({cpu} CPU, {memory}, {gpus} GPU): {'; '.join(problems)}")


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
