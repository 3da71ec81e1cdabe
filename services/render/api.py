"""What other packages may read of render: the shard plan, store keys and sample format.

Everything outside ``services/render`` (train, the conductor, the report) imports the
render stage through this module only; the layering test (``tests/test_layering.py``)
keeps it so. Importing it is light: no OpenGL, no mesh libraries.

Store layout::

    datasets/<dataset_id>/<split>-<shard:05d>.tar      WebDataset shards (see below)
    datasets/<dataset_id>/<split>-<shard:05d>.index.json  where each sample's rgb image lies in the tar
                                                       (offset, size, sha256) and its class: random access
    datasets/<dataset_id>/parts/<split>-<shard>.json   one finished shard's manifest entry
    datasets/<dataset_id>/manifest.json                every finished shard; ``metadata`` has
                                                       family, classes, image_size, splits, seed
    datasets/<dataset_id>/contact-sheet.png            rows = classes, columns = views

Sample format: the tar members of one sample share the basename
``<class:05d>_<instance>_<view:05d>`` (:func:`sample_key`) and are ``json`` (the record
that re-renders the image), ``cls`` (ASCII class index), and those of the dataset's
``outputs``: ``rgb.png`` (or ``rgb.webp`` / ``rgb.jpg`` with ``rgb_format``; any of
:data:`RGB_MEMBERS`, read with :func:`decode_rgb`), ``seg.png`` (uint16, class + 1 on the
object, 0 background; noise scenes: one label per pixel), and for 3D views ``depth.png``
(16-bit millimetres, ±0.5 mm; :func:`decode_depth` gives metres, ``inf`` off the object)
and ``mask.png``.
"""

from __future__ import annotations

from services.common.manifest import Manifest
from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.render.codec import (
    DEPTH_MAX_M, DEPTH_PRECISION_M, DEPTH_UNIT_M, INDEXED_MEMBERS, RGB_MEMBERS, decode_depth, decode_png, decode_rgb,
    find_rgb,
)
from services.render.keys import (
    contact_sheet_key, dataset_manifest_key, part_key, sample_key, shard_index_key, shard_key,
)
from services.render.plan import (
    SPLITS, ShardTask, SplitLayout, all_shards, dataset_shards, layout, shard_plan, shards_for_index, split_counts,
)


def consolidate_manifest(spec: ExperimentSpec, store: Store, dataset_name: str) -> Manifest:
    """Merge every finished shard's part record into the dataset manifest, write and return it."""
    from services.render.output import consolidate_manifest as consolidate  # the writers: heavier imports

    return consolidate(spec, store, dataset_name)


def soft_silhouette(vertices, faces, cameras, sigma: float | None = None, chunk_pairs: int | None = None):
    """Differentiable soft silhouettes (n, H, W) of a mesh (torch); see :mod:`services.render.renderers.soft`."""
    from services.render.renderers import soft  # torch: imported only when used

    kwargs = {k: v for k, v in (("sigma", sigma), ("chunk_pairs", chunk_pairs)) if v is not None}
    return soft.soft_silhouette(vertices, faces, cameras, **kwargs)


def hard_silhouette(vertices, faces, cameras):
    """(n, H, W) bool: the ``sigma -> 0`` limit of :func:`soft_silhouette` (pixel centres covered by a face)."""
    from services.render.renderers import soft

    return soft.hard_silhouette(vertices, faces, cameras)


def cameras_from_records(records: list[dict], dtype=None):
    """The cameras (pose, intrinsics, object pose) of render records, for :func:`soft_silhouette`."""
    from services.render.renderers import soft

    return soft.cameras_from_records(records) if dtype is None else soft.cameras_from_records(records, dtype)


def orbit_records(azimuths_deg, elevations_deg, *, image_size: int, centre, radius: float, fov_deg: float = 30.0) -> list[dict]:
    """Render records of cameras around a mesh's bounding sphere (one per azimuth/elevation pair)."""
    from services.render.renderers import soft

    return soft.orbit_records(azimuths_deg, elevations_deg, image_size=image_size, centre=centre, radius=radius,
                              fov_deg=fov_deg)


def render_masks(mesh, records: list[dict]):
    """(n, H, W) bool silhouettes of a trimesh drawn by the GL renderer from render records."""
    from services.render.renderers import soft

    return soft.render_masks(mesh, records)


__all__ = [
    "DEPTH_MAX_M", "DEPTH_PRECISION_M", "DEPTH_UNIT_M", "INDEXED_MEMBERS", "RGB_MEMBERS", "decode_depth", "decode_png", "decode_rgb", "find_rgb",
    "SPLITS", "ShardTask", "cameras_from_records", "hard_silhouette", "orbit_records", "render_masks", "soft_silhouette", "SplitLayout", "all_shards", "consolidate_manifest", "contact_sheet_key",
    "dataset_manifest_key", "dataset_shards", "layout", "part_key", "sample_key", "shard_index_key", "shard_key", "shard_plan",
    "shards_for_index", "split_counts",
]
