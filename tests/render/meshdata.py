"""Hand-made meshes and IFS classes written in meshgen's store layout (tests only)."""

from __future__ import annotations

import json

import numpy as np
import trimesh

from services.common.manifest import Manifest, put_with_entry, write_manifest
from services.common.spec.experiment import ExperimentSpec, parse_spec


def glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    return mesh.export(file_type="glb")


def primitive_meshes() -> list[trimesh.Trimesh]:
    return [trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=2),
            trimesh.creation.cylinder(radius=0.5, height=1.5, sections=16), trimesh.creation.cone(radius=0.6, height=1.2)]


def write_meshes(store, spec: ExperimentSpec, name: str, meshes: dict[tuple[int, int], trimesh.Trimesh | bytes]) -> None:
    """Meshes at meshes/<id>/<class:05d>/<instance>.glb plus meshgen's manifest."""
    dataset_id = spec.mesh_dataset_id(name)
    dataset = spec.dataset(name)
    entries = []
    for (cls, instance), mesh in sorted(meshes.items()):
        data = mesh if isinstance(mesh, bytes) else glb_bytes(mesh)
        entries.append(put_with_entry(store, f"meshes/{dataset_id}/{cls:05d}/{instance}.glb", data,
                                      class_index=cls, instance=instance, seed=0, stats={}))
    manifest = Manifest(kind="meshes", spec_hash=dataset_id.rsplit("-", 1)[-1], entries=entries,
                        metadata={"family": dataset.kind, "classes": dataset.classes, "dataset": name})
    write_manifest(store, f"meshes/{dataset_id}/manifest.json", manifest)


SIERPINSKI = [[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]]


def write_ifs(store, spec: ExperimentSpec, name: str, systems: list[list[list[float]]]) -> None:
    dataset_id = spec.mesh_dataset_id(name)
    entries = []
    for cls, maps in enumerate(systems):
        body = json.dumps({"maps": maps, "probs": [1 / len(maps)] * len(maps), "filling_rate": 0.3, "seed": cls}).encode()
        entries.append(put_with_entry(store, f"meshes/{dataset_id}/{cls:05d}/ifs.json", body, class_index=cls,
                                      instance=0, seed=cls, stats={}))
    write_manifest(store, f"meshes/{dataset_id}/manifest.json",
                   Manifest(kind="meshes", entries=entries, metadata={"family": "fractal2d"}))


def tiny_spec(**render) -> ExperimentSpec:
    settings = {"image_size": 48, "views_per_instance": 5, "shard_size": 7, "val_fraction": 0.2, **render}
    return parse_spec({"name": "t", "seed": 3, "datasets": [
        {"name": "shapes", "family": {"family": "procsynth"}, "classes": 2, "instances_per_class": 2, "render": settings},
    ]})


