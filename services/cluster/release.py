"""The jobs engine's release step: create a stage's Job (or PyTorchJob/JobSet) once its inputs are complete.

Runs in a tiny CPU pod (``flatland k8s release``) with a ServiceAccount that may only
create and read Jobs in its namespace. Creating the Job only then, instead of applying it
up front with a waiting init container, means no pod holds a GPU (or any large request)
while earlier stages run, and the Job's ``activeDeadlineSeconds`` counts its work alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml


#: What a release step may create: (apiVersion, kind) -> the custom resource's (group, version, plural), None for Jobs.
RELEASABLE = {
    ("batch/v1", "Job"): None,
    ("kubeflow.org/v1", "PyTorchJob"): ("kubeflow.org", "v1", "pytorchjobs"),
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): ("jobset.x-k8s.io", "v1alpha2", "jobsets"),
}


def read_objects(text: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a manifest: batch/v1 Jobs, PyTorchJobs or JobSets, each with a name and namespace."""
    try:
        objects = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    if not objects:
        raise ValueError("no object in the manifest")
    for obj in objects:
        kinds = ", ".join(f"{a}/{k}" for a, k in RELEASABLE)
        if not isinstance(obj, dict) or (obj.get("apiVersion"), obj.get("kind")) not in RELEASABLE:
            raise ValueError(f"only batch/v1 Jobs can be released (or {kinds.split(', ', 1)[1]}), got "
                             f"{obj.get('apiVersion')}/{obj.get('kind')}" if isinstance(obj, dict)
                             else "only batch/v1 Jobs can be released")
        meta = obj.get("metadata") or {}
        if not meta.get("name") or not meta.get("namespace"):
            raise ValueError(f"every {obj['kind']} needs metadata.name and metadata.namespace")
    return objects


def create_objects(objects: list[dict[str, Any]], api: Any = None, custom_api: Any = None) -> Iterator[str]:
    """Create each object; one that already exists (a retried release step) is left as it is.

    ``api`` is a ``kubernetes.client.BatchV1Api`` (Jobs), ``custom_api`` a
    ``CustomObjectsApi`` (PyTorchJob, JobSet); by default configured from the pod's
    ServiceAccount (in-cluster).
    """
    from kubernetes import client, config

    if (api is None and any(RELEASABLE[o["apiVersion"], o["kind"]] is None for o in objects)) or (
            custom_api is None and any(RELEASABLE[o["apiVersion"], o["kind"]] is not None for o in objects)):
        config.load_incluster_config()
    api = api or client.BatchV1Api()
    for obj in objects:
        meta = obj["metadata"]
        what = f"{obj['kind'].lower()}/{meta['name']}"
        custom = RELEASABLE[obj["apiVersion"], obj["kind"]]
        try:
            if custom is None:
                api.create_namespaced_job(namespace=meta["namespace"], body=obj)
            else:
                custom_api = custom_api or client.CustomObjectsApi()
                group, version, plural = custom
                custom_api.create_namespaced_custom_object(group, version, meta["namespace"], plural, obj)
            yield f"created {what} in {meta['namespace']}"
        except client.ApiException as exc:
            if exc.status != 409:  # 409 Conflict: created by an earlier try of this step
                raise
            yield f"{what} already exists in {meta['namespace']}"
