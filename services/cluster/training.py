"""Multi-node training on a training operator: a Kubeflow ``PyTorchJob`` or a ``JobSet``.

``cluster.multinode`` picks what runs the ranks of a train run when ``cluster.train_nodes > 1``:

* ``pytorchjob``: a ``kubeflow.org/v1`` PyTorchJob (Kubeflow training operator) with an
  ``elasticPolicy``: the operator gives every Worker pod torchrun's ``PET_*`` settings, with
  c10d rendezvous hosted at ``<job>-worker-0`` (``min = max = train_nodes``: a fixed-size
  group), ``PET_MAX_RESTARTS`` group restarts of the workers and ``nprocPerNode`` processes
  per pod (one per GPU);
* ``jobset``: a ``jobset.x-k8s.io/v1alpha2`` JobSet whose one replicated Job is an Indexed Job
  of ``train_nodes`` pods; the JobSet gives the pods stable DNS names (rank 0's pod hosts the
  c10d store) and restarts *all* pods together when one fails (``failurePolicy.maxRestarts``),
  except on exit code 2 (bad spec: ``FailJobSet`` at once);
* ``indexed`` (jobs engine only): an Indexed Job with a headless Service
  (:mod:`services.cluster.manifests`).

Either way each pod runs ``torchrun --module services.cli job train …`` and the training
loop reads ``RANK``/``WORLD_SIZE``; every rank pushes its metrics under its own ``rank``
label (:mod:`services.common.jobmetrics`). With ``cluster.queue`` the PyTorchJob/JobSet (not
its pods) carries ``kueue.x-k8s.io/queue-name`` and is created suspended: Kueue admits it as
one workload, so all ranks start together or none does.

The same objects serve both engines (:func:`services.cluster.manifests.rank_group` puts the
pieces together): the jobs engine releases the object once the datasets are rendered; the argo
engine creates it from a resource step. This module only assembles them.
"""

from __future__ import annotations

from typing import Any

from services.common.spec.experiment import ExperimentSpec

PYTORCHJOB_API = "kubeflow.org/v1"
JOBSET_API = "jobset.x-k8s.io/v1alpha2"
#: Port of torchrun's c10d rendezvous store (hosted by rank 0's agent).
TORCHRUN_PORT = 29500
#: Label on every rank pod of one group; the group's NetworkPolicy selects on it.
RANKS_LABEL = "flatland.io/ranks"
#: The JobSet's one replicated Job (its pods are ``<jobset>-ranks-0-<index>``).
JOBSET_RANKS = "ranks"
#: The training operator finds the rendezvous port on the container ``pytorch`` by this port name.
PYTORCHJOB_CONTAINER = "pytorch"
PYTORCHJOB_PORT_NAME = "pytorchjob-port"
#: Longest operator object name: a PyTorchJob's Service ``<name>-worker-<i>`` (with the 5 characters
#: of a generated name) and a JobSet's pod hostname ``<name>-ranks-0-<i>`` must stay DNS labels (63).
GROUP_NAME_LIMIT = 44
#: What the jobs engine's release step may create, per cluster.multinode (API group, resource).
OPERATOR_RESOURCES = {"pytorchjob": ("kubeflow.org", "pytorchjobs"), "jobset": ("jobset.x-k8s.io", "jobsets")}


def pytorchjob(spec: ExperimentSpec, pod: dict[str, Any], pod_labels: dict[str, str], metadata: dict[str, Any], *,
               group: str, procs_per_pod: int, restart_policy: str = "ExitCode") -> dict[str, Any]:
    """A PyTorchJob of ``cluster.train_nodes`` Worker pods with elastic c10d rendezvous.

    ``pod`` is the rank's pod spec (one container running ``torchrun``); ``metadata`` the
    job's (name or generateName, namespace, labels with the Kueue queue). ``restart_policy``
    of the Workers: ``ExitCode`` (jobs engine: the operator recreates a pod killed by a
    signal, an eviction say; exit codes 1-127, a bad spec included, fail the job) or
    ``Never`` (argo engine: any failed pod fails the job, and Argo's retry of the step
    recreates the whole group).
    """
    nodes = spec.cluster.train_nodes
    pod = {k: v for k, v in pod.items() if k != "restartPolicy"}  # the operator sets it from the replica's
    (main,) = pod["containers"]
    pod["containers"] = [{**main, "name": PYTORCHJOB_CONTAINER,
                          "ports": [{"name": PYTORCHJOB_PORT_NAME, "containerPort": TORCHRUN_PORT}]}]
    run_policy: dict[str, Any] = {
        "backoffLimit": spec.cluster.backoff_limit,
        "activeDeadlineSeconds": spec.cluster.deadline("train"),
        "ttlSecondsAfterFinished": spec.cluster.ttl_seconds_after_finished,
        "cleanPodPolicy": "Running",  # finished pods keep their logs; running ones go with the job
    }
    if spec.cluster.queue:
        run_policy["suspend"] = True  # Kueue unsuspends it on admission, every Worker at once
    return {
        "apiVersion": PYTORCHJOB_API,
        "kind": "PyTorchJob",
        "metadata": metadata,
        "spec": {
            "elasticPolicy": {
                "rdzvBackend": "c10d",
                "minReplicas": nodes,  # a fixed-size group: every rank or none
                "maxReplicas": nodes,
                # A failed worker process restarts every worker of the group, this many times.
                "maxRestarts": spec.cluster.backoff_limit,
            },
            "nprocPerNode": str(procs_per_pod),
            "pytorchReplicaSpecs": {"Worker": {
                "replicas": nodes,
                "restartPolicy": restart_policy,
                "template": {"metadata": {"labels": {**pod_labels, RANKS_LABEL: group}}, "spec": pod},
            }},
            "runPolicy": run_policy,
        },
    }


def jobset_env(spec: ExperimentSpec, name: str, procs_per_pod: int) -> list[dict[str, str]]:
    """torchrun's settings (``PET_*``) for the rank pods of JobSet ``name``."""
    return [
        {"name": "PET_NNODES", "value": str(spec.cluster.train_nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(procs_per_pod)},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        # JobSet pods resolve as <jobset>-<replicatedJob>-<job index>-<pod index>.<subdomain = jobset name>.
        {"name": "PET_RDZV_ENDPOINT", "value": f"{name}-{JOBSET_RANKS}-0-0.{name}:{TORCHRUN_PORT}"},
        {"name": "PET_RDZV_ID", "value": name},
        {"name": "PET_MAX_RESTARTS", "value": str(spec.cluster.backoff_limit)},
    ]


def jobset(spec: ExperimentSpec, job: dict[str, Any], metadata: dict[str, Any], job_labels: dict[str, str]) -> dict[str, Any]:
    """A JobSet whose one replicated Job is ``job`` (the Indexed Job of the rank pods), restarted as a group.

    ``job`` is a batch/v1 Job as the jobs engine builds it (pods with :func:`jobset_env`);
    its suspension, clean-up and retries become the JobSet's.
    """
    name = metadata["name"]
    job_spec = {k: v for k, v in job["spec"].items() if k not in ("suspend", "ttlSecondsAfterFinished", "backoffLimit")}
    # One failed pod fails its Job at once, and the JobSet then recreates every rank (restart as a group).
    job_spec["backoffLimit"] = 0
    template = job_spec["template"]
    template["metadata"]["labels"][RANKS_LABEL] = name
    (main,) = template["spec"]["containers"]
    main["ports"] = [{"name": "torchrun", "containerPort": TORCHRUN_PORT}]
    body: dict[str, Any] = {
        "failurePolicy": {
            "maxRestarts": spec.cluster.backoff_limit,
            # Exit code 2 (bad spec) fails the rank's Job through its podFailurePolicy: no restart can help.
            "rules": [{"name": "bad-spec", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
        },
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "successPolicy": {"operator": "All"},
        "replicatedJobs": [{"name": JOBSET_RANKS, "replicas": 1,
                            "template": {"metadata": {"labels": job_labels}, "spec": job_spec}}],
        "ttlSecondsAfterFinished": spec.cluster.ttl_seconds_after_finished,
    }
    if spec.cluster.queue:
        body["suspend"] = True  # Kueue admits the JobSet whole
    return {"apiVersion": JOBSET_API, "kind": "JobSet", "metadata": metadata, "spec": body}


def ranks_policy(spec: ExperimentSpec, group: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """NetworkPolicy ``name``: the ranks of one group (and nothing else) may reach each other.

    The base install denies all ingress in the namespace; ranks talk on the rendezvous port,
    then NCCL/gloo on ephemeral ports.
    """
    ranks = {"matchLabels": {RANKS_LABEL: group}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": spec.cluster.namespace, "labels": labels},
        "spec": {"podSelector": ranks, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": ranks}]}]},
    }
