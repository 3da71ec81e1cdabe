"""Meshes in, encoded images out: the per-worker renderer pool, mesh loading, re-rendering records."""

from __future__ import annotations

import io
import numpy as np
import trimesh
from PIL import Image

from services.common.store import Store

# One renderer per (image size, backend) per process: contexts are expensive, meshes are swapped in.
_RENDERERS: dict[tuple[int, str], object] = {}


def get_renderer(image_size: int, backend: str = "auto"):
    """The process's :class:`~services.render.renderers.gl.SceneRenderer` for this size (created once)."""
    from services.render.renderers.gl import SceneRenderer, select_platform

    key = (int(image_size), select_platform(backend))
    if key not in _RENDERERS:
        _RENDERERS[key] = SceneRenderer(image_size, backend)
    return _RENDERERS[key]


def close_renderers() -> None:
    """Free every pooled OpenGL context (tests, long-lived servers shutting down)."""
    while _RENDERERS:
        _, renderer = _RENDERERS.popitem()
        renderer.close()


def load_glb(data: bytes) -> trimesh.Trimesh:
    """A single triangle mesh from GLB bytes (scenes are concatenated with their transforms)."""
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types on bad bytes
        raise ValueError(f"not a readable GLB mesh: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, trimesh.Trimesh):
        raise ValueError(f"GLB did not contain a triangle mesh (got {type(loaded).__name__})")
    faces = np.asarray(loaded.faces)
    if faces.size and (faces.min() < 0 or faces.max() >= len(loaded.vertices)):
        # trimesh loads these unchecked (process=False); the first use would be an IndexError.
        raise ValueError(
            f"glb: face indices must lie in 0..{len(loaded.vertices) - 1} (the mesh has {len(loaded.vertices)} "
            f"vertices); found {int(faces.min())}..{int(faces.max())}"
        )
    return loaded


def load_mesh(store: Store, key: str) -> trimesh.Trimesh:
    """Load a GLB mesh from the store (:class:`ObjectNotFoundError` if missing)."""
    return load_glb(store.get_bytes(key))


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a (h, w, 3) uint8, (h, w) uint8 or (h, w) uint16 image (lossless, deterministic)."""
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))  # uint16 -> 16-bit greyscale PNG
    pil.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The array of a PNG written by :func:`encode_png` (uint16 images come back as uint16)."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    return array.astype(np.uint16) if image.mode.startswith("I") else array


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_view(view, label: int, record_json: bytes) -> dict[str, bytes]:
    """The shard files of one rendered 3D view: rgb.png, depth.npy, seg.png, mask.png, json, cls."""
    return {
        "rgb.png": encode_png(view.rgb),
        "depth.npy": encode_npy(view.depth),
        "seg.png": encode_png(view.segmentation(label + 1)),
        "mask.png": encode_png(np.where(view.mask, np.uint8(255), np.uint8(0))),
        "json": record_json,
        "cls": str(int(label)).encode("ascii"),
    }


def redraw_record(record: dict, store: Store | None = None, mesh: trimesh.Trimesh | None = None) -> np.ndarray:
    """The (h, w, 3) uint8 RGB image of any shard record (mesh view, fractal or noise scene), drawn again."""
    kind = record.get("kind", "mesh")
    if kind == "mesh":
        return render_record(record, mesh=mesh, store=store).rgb
    if kind == "fractal":
        from services.render.renderers.fractal import draw_fractal_records

        return np.repeat(draw_fractal_records([record])[0][..., None], 3, axis=2)
    if kind == "noisescene":
        from services.render.renderers.scenes import draw_scene

        return draw_scene(record)[0]
    raise ValueError(f"record kind must be mesh, fractal or noisescene, got {kind!r}")


def render_record(record: dict, mesh: trimesh.Trimesh | None = None, store: Store | None = None):
    """Re-render one image from its JSON record.

    Parameters
    ----------
    record : dict
        A record from a shard's ``json`` file (or :func:`~services.render.sampling.sample_view`).
    mesh : trimesh.Trimesh, optional
        The mesh; default: loaded from ``store`` at ``record["mesh_key"]``.
    store : Store, optional

    Returns
    -------
    RenderedView
        rgb, depth and mask, identical to the original render on the same platform.
    """
    if mesh is None:
        if store is None or not record.get("mesh_key"):
            raise ValueError("render_record needs the mesh, or a store and a record with a mesh_key")
        mesh = load_mesh(store, record["mesh_key"])
    renderer = get_renderer(record["image_size"], record.get("backend", "auto"))
    renderer.set_mesh(mesh, record["material"])
    return renderer.render(record)
