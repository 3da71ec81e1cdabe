"""What other packages may read of meshgen: where its outputs live and how to read them.

Everything outside ``services/meshgen`` (render, the conductor, the report) imports
meshgen through this module only; the layering test (``tests/test_layering.py``)
keeps it so.

Store layout::

    meshes/<dataset_id>/manifest.json                  one entry per stored item
    meshes/<dataset_id>/<class:05d>/<instance>.glb     procsynth, morphsynth meshes
    meshes/<dataset_id>/<class:05d>/ifs.json           fractal2d class definitions
    fits/<fit_id>/mesh.glb, losses.jsonl, losses.png, metrics.json   one mesh fitted to silhouettes or a mesh
    fits/<dataset_id>/recoverability.json              shape recoverability of a rendered dataset (per class, mean)
"""

from __future__ import annotations

from services.meshgen.dataset import MESHGEN_FAMILIES, manifest_key, missing_classes
from services.meshgen.fractal2d import ifs_variants
from services.meshgen.family import class_dir

#: Dataset families whose classes meshgen makes (noise scenes are made by render alone).
MESH_FAMILIES = MESHGEN_FAMILIES


def mesh_key(dataset_id: str, class_index: int, instance: int) -> str:
    """Store key of one mesh instance (GLB)."""
    return f"meshes/{dataset_id}/{class_dir(class_index)}/{instance}.glb"


def ifs_key(dataset_id: str, class_index: int) -> str:
    """Store key of one fractal class's IFS definition (JSON: ``maps`` (n, 6), ``probs``)."""
    return f"meshes/{dataset_id}/{class_dir(class_index)}/ifs.json"


def fit_key(fit_id: str, name: str) -> str:
    """Store key of one output of a fit (``mesh.glb``, ``losses.jsonl``, ``losses.png``, ``metrics.json``)."""
    return f"fits/{fit_id}/{name}"


def recoverability_key(dataset_id: str) -> str:
    """Store key of a dataset's shape-recoverability summary (written by the meshgen job's ``fit_dataset``)."""
    return f"fits/{dataset_id}/recoverability.json"


__all__ = ["fit_key", "recoverability_key", "MESH_FAMILIES", "ifs_key", "ifs_variants", "manifest_key", "mesh_key", "missing_classes"]
