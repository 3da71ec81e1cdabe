"""Pick the engine that runs an experiment on Kubernetes: plain Jobs or one Argo Workflow."""

from __future__ import annotations

from typing import Any

from services.common.spec.experiment import ExperimentSpec

ENGINES = ("jobs", "argo")


def cluster_manifests(spec: ExperimentSpec, spec_text: str, *, engine: str | None = None,
                      store_url: str | None = None, image_digests: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The objects that run ``spec`` with ``engine`` (default: ``spec.cluster.engine``)."""
    engine = engine or spec.cluster.engine
    if engine == "argo":
        from services.cluster.argo import experiment_workflow

        return experiment_workflow(spec, spec_text, store_url=store_url, image_digests=image_digests)
    if engine == "jobs":
        from services.cluster.manifests import experiment_manifests

        return experiment_manifests(spec, spec_text, store_url=store_url, image_digests=image_digests)
    raise ValueError(f"unknown engine {engine!r}; engines are: {', '.join(ENGINES)}")
