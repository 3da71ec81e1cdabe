"""Meshes in, encoded images out: the per-worker renderer pool, mesh loading, re-rendering records."""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict

import numpy as np
import trimesh

from services.common.store import Store
from services.render.codec import OUTPUTS, decode_png, encode_depth, encode_png, encode_rgb

__all__ = ["decode_png", "encode_png"]  # kept here for callers that import them from views

# The per-process renderer pool: contexts are expensive (an OSMesa context of a few hundred pixels holds ~10 MB),
# meshes are swapped in. Least recently used first out, so a client asking for many image sizes cannot grow the
# process without bound. FLATLAND_GL_CONTEXTS sets the size (default 4: a dataset's size, a contact sheet's,
# and a couple of RenderImages sizes stay warm).
DEFAULT_MAX_RENDERERS = 4
_RENDERERS: OrderedDict[tuple[int, str], object] = OrderedDict()
_POOL_LOCK = threading.Lock()


def max_renderers() -> int:
    """How many GL contexts a process keeps (``FLATLAND_GL_CONTEXTS``, default 4, at least 1)."""
    text = os.environ.get("FLATLAND_GL_CONTEXTS", "").strip()
    if not text:
        return DEFAULT_MAX_RENDERERS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"FLATLAND_GL_CONTEXTS: must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"FLATLAND_GL_CONTEXTS: must be >= 1, got {value}")
    return value


def get_renderer(image_size: int, backend: str = "auto"):
    """The process's :class:`~services.render.renderers.gl.SceneRenderer` for this size.

    Pooled per (size, platform); beyond :func:`max_renderers` the least recently used one is closed.
    A renderer from here stays valid until the next call for *another* size may evict it: use it,
    then ask again (callers share the GL contexts under one lock, as the servicer does).
    """
    from services.render.renderers.gl import SceneRenderer, select_platform

    key = (int(image_size), select_platform(backend))
    limit = max_renderers()
    with _POOL_LOCK:
        renderer = _RENDERERS.get(key)
        if renderer is not None:
            _RENDERERS.move_to_end(key)
            return renderer
        while len(_RENDERERS) >= limit:  # free before allocating: the peak stays at ``limit`` contexts
            _, evicted = _RENDERERS.popitem(last=False)
            evicted.close()
        renderer = _RENDERERS[key] = SceneRenderer(image_size, backend)
        return renderer


def pooled_renderers() -> list[tuple[int, str]]:
    """The (image size, platform) keys of the live pooled contexts, least recently used first."""
    with _POOL_LOCK:
        return list(_RENDERERS)


def close_renderers() -> None:
    """Free every pooled OpenGL context (tests, long-lived servers shutting down)."""
    with _POOL_LOCK:
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


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_view(view, label: int, record_json: bytes, outputs=OUTPUTS, rgb_format: str = "png") -> dict[str, bytes]:
    """The shard files of one rendered 3D view: those of ``outputs`` (rgb.<format>, depth.png, seg.png,
    mask.png; see :mod:`services.render.codec`), then json and cls."""
    files: dict[str, bytes] = {}
    if "rgb" in outputs:
        name, data = encode_rgb(view.rgb, rgb_format)
        files[name] = data
    if "depth" in outputs:
        files["depth.png"] = encode_depth(view.depth)
    if "seg" in outputs:
        files["seg.png"] = encode_png(view.segmentation(label + 1))
    if "mask" in outputs:
        files["mask.png"] = encode_png(np.where(view.mask, np.uint8(255), np.uint8(0)))
    files["json"] = record_json
    files["cls"] = str(int(label)).encode("ascii")
    return files


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
    if record.get("albedo_from"):  # a morphsynth cue-conflict image: another class's albedo on this mesh
        from services.render.renderers.texture import transfer_albedo

        if store is None:
            raise ValueError("render_record: this record wears the albedo of another mesh (albedo_from); give a store")
        mesh = transfer_albedo(mesh, load_mesh(store, record["albedo_from"]))
    renderer = get_renderer(record["image_size"], record.get("backend", "auto"))
    renderer.set_mesh(mesh, record["material"])
    return textured_view(renderer.render(record), record)


def textured_view(view, record: dict):
    """``view`` with the record's ``class_texture`` laid on (unchanged when it has none)."""
    texture = record.get("class_texture")
    if not texture:
        return view
    from services.render.renderers.gl import RenderedView
    from services.render.renderers.texture import apply_texture

    return RenderedView(rgb=apply_texture(view.rgb, view.depth, view.mask, record, texture), depth=view.depth,
                        mask=view.mask)
