"""The jobs engine's release step: create a stage's Job once its inputs are complete.

Runs in a tiny CPU pod (``flatland k8s release``) with a ServiceAccount that may only
create and read Jobs in its namespace. Creating the Job only then, instead of applying it
up front with a waiting init container, means no pod holds a GPU (or any large request)
while earlier stages run, and the Job's ``activeDeadlineSeconds`` counts its work alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml


def read_objects(text: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a manifest; each must be a batch/v1 Job with a name and namespace."""
    try:
        objects = [doc for doc in yaml.safe_load_all(text) if doc]
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    if not objects:
        raise ValueError("no object in the manifest")
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("apiVersion") != "batch/v1" or obj.get("kind") != "Job":
            raise ValueError(f"only batch/v1 Jobs can be released, got {obj.get('apiVersion')}/{obj.get('kind')}"
                             if isinstance(obj, dict) else "only batch/v1 Jobs can be released")
        meta = obj.get("metadata") or {}
        if not meta.get("name") or not meta.get("namespace"):
            raise ValueError("every Job needs metadata.name and metadata.namespace")
    return objects


def create_objects(objects: list[dict[str, Any]], api: Any = None) -> Iterator[str]:
    """Create each Job; one that already exists (a retried release step) is left as it is.

    ``api`` is a ``kubernetes.client.BatchV1Api``; by default one configured from the pod's
    ServiceAccount (in-cluster).
    """
    from kubernetes import client, config

    if api is None:
        config.load_incluster_config()
        api = client.BatchV1Api()
    for obj in objects:
        meta = obj["metadata"]
        try:
            api.create_namespaced_job(namespace=meta["namespace"], body=obj)
            yield f"created job/{meta['name']} in {meta['namespace']}"
        except client.ApiException as exc:
            if exc.status != 409:  # 409 Conflict: created by an earlier try of this step
                raise
            yield f"job/{meta['name']} already exists in {meta['namespace']}"
