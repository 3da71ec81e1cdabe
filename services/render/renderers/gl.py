"""Headless OpenGL rendering of one mesh under a scene description.

Backend library: ``pyrender2`` (import name ``pyrender``), a maintained fork of
pyrender with the same API. We use it rather than upstream pyrender 0.1.45
because upstream pins ``PyOpenGL==3.1.0``, whose OSMesa binding is broken
(context creation fails on current Mesa), and upstream's ``Mesh.bounds`` uses
``np.infty``, which numpy 2 removed. The fork fixes both without pinning old
numpy.

One trap remains in the fork and is fixed here at the right depth: pyrender's
:class:`~pyrender.shader_program.ShaderProgramCache` keys compiled programs on
``OpenGL.contextdata.getContext()``. Under OSMesa that returns a *fresh* ctypes
pointer object on every call, and two such objects never compare equal, so
every ``render()`` misses the cache, compiles new shaders and leaks them
(~3 MB per render, several times slower). :class:`StableShaderProgramCache`
normalises the context to its integer address, and :class:`_OffscreenRenderer`
installs it whenever pyrender (re)creates its internal renderer.

The platform (OSMesa on CPU, EGL on GPU) must be chosen through
``PYOPENGL_PLATFORM`` *before* PyOpenGL is first imported; :func:`select_platform`
does that and refuses clearly when PyOpenGL was already fixed to another one.

Usage: one :class:`SceneRenderer` per worker; :meth:`SceneRenderer.set_mesh`
uploads a mesh once, :meth:`SceneRenderer.render` changes camera, lights,
ambient and object pose per view (plain data from :mod:`services.render.sampling`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from services.common.errors import FlatlandError
from services.common.glplatform import PLATFORMS, RenderBackendError, select_platform  # noqa: F401 (re-exported)
from services.render.renderers.record import RecordError, validate_material, validate_record  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SOFTWARE_DRIVERS = ("llvmpipe", "softpipe", "swrast")
# what a canonical render depends on besides the mesh (a record's 2D ``planar`` variant is applied after)
CANONICAL_FIELDS = ("image_size", "camera", "lights", "ambient", "material", "object", "background")
PHONG_FRAGMENT_SHADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shaders", "phong.frag")


class DegenerateMeshError(FlatlandError, ValueError):
    """A mesh that cannot be rendered (no faces, non-finite vertices, zero extent)."""


def _context_key(context: Any) -> Any:
    """A hashable, stable identity for a GL context handle (its integer address)."""
    if isinstance(context, (int, np.integer)):
        return int(context)
    try:
        return ctypes.cast(context, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return context


def _make_stable_cache_class():
    from pyrender.shader_program import ShaderProgram, ShaderProgramCache
    import OpenGL.contextdata

    class StableShaderProgramCache(ShaderProgramCache):
        """ShaderProgramCache keyed on the context's address, not its ctypes wrapper.

        ``shading = "phong"`` swaps pyrender's GGX ``mesh.frag`` for our Blinn-Phong
        ``shaders/phong.frag`` (same uniforms and inputs, so pyrender binds it unchanged).
        """

        shading = "pbr"
        light_counts = (0, 0, 0)  # (directional, point, spot) of the scene about to be drawn

        def _fragment(self, fragment_shader):
            if self.shading == "phong" and fragment_shader == "mesh.frag":
                return PHONG_FRAGMENT_SHADER
            return fragment_shader

        def program_key(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None) -> tuple:
            defines = defines or {}
            names = [os.path.basename(f) for f in (vertex_shader, fragment_shader, geometry_shader) if f is not None]
            context = _context_key(OpenGL.contextdata.getContext())
            return (context, *sorted([(n, 1) for n in names] + [(d, defines[d]) for d in defines]))

        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            defines = defines or {}
            if self._fragment(fragment_shader) != fragment_shader:
                fragment_shader = self._fragment(fragment_shader)
                directional, point, spot = self.light_counts
                defines = {**defines, "N_DIRECTIONAL_LIGHTS": directional, "N_POINT_LIGHTS": point,
                           "N_SPOT_LIGHTS": spot}
            key = self.program_key(vertex_shader, fragment_shader, geometry_shader, defines)
            program = self._program_cache.get(key)
            if program is None:
                paths = [os.path.join(self.shader_dir, f) if f is not None else None
                         for f in (vertex_shader, fragment_shader, geometry_shader)]
                program = ShaderProgram(vertex_shader=paths[0], fragment_shader=paths[1],
                                        geometry_shader=paths[2], defines=defines)
                self._program_cache[key] = program
            return program

        def __len__(self) -> int:
            return len(self._program_cache)

    return StableShaderProgramCache


_STABLE_CACHE_CLASS = None


def stable_shader_cache_class():
    """The :class:`StableShaderProgramCache` class (built lazily: it imports OpenGL)."""
    global _STABLE_CACHE_CLASS
    if _STABLE_CACHE_CLASS is None:
        _STABLE_CACHE_CLASS = _make_stable_cache_class()
    return _STABLE_CACHE_CLASS


def _make_offscreen_class():
    import pyrender

    class _OffscreenRenderer(pyrender.OffscreenRenderer):
        """pyrender's OffscreenRenderer with the stable shader cache installed on every (re)creation."""

        def _create(self):
            super()._create()
            self._renderer._program_cache = stable_shader_cache_class()()

    return _OffscreenRenderer


@dataclass
class RenderedView:
    """The images of one view.

    Attributes
    ----------
    rgb : (h, w, 3) uint8
    depth : (h, w) float32
        Distance along the camera axis in world units; ``np.inf`` where no object.
    mask : (h, w) bool
        Silhouette: exactly the pixels where ``depth`` is finite.
    """

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray

    def segmentation(self, label: int) -> np.ndarray:
        """(h, w) uint16 label map: ``label`` on the object, 0 elsewhere."""
        return np.where(self.mask, np.uint16(label), np.uint16(0)).astype(np.uint16)


def check_mesh(mesh: trimesh.Trimesh) -> None:
    """Raise :class:`DegenerateMeshError` unless ``mesh`` can be rendered."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise DegenerateMeshError(f"expected a triangle mesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise DegenerateMeshError(f"mesh has no faces ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces)")
    if not np.all(np.isfinite(mesh.vertices)):
        bad = int((~np.isfinite(mesh.vertices)).any(axis=1).sum())
        raise DegenerateMeshError(f"mesh has {bad} vertices with NaN or infinite coordinates")
    if float(np.ptp(mesh.vertices, axis=0).max()) <= 0:
        raise DegenerateMeshError("mesh has zero extent (all vertices coincide)")


def mesh_frame(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    """Centre (bounding-box centre, (3,) float) and bounding radius about it (float)."""
    centre = mesh.bounds.mean(axis=0)
    radius = float(np.sqrt(((mesh.vertices - centre) ** 2).sum(axis=1).max()))
    return centre, radius


def _pyrender_mesh(mesh: trimesh.Trimesh, material: dict):
    """Build a pyrender Mesh by hand: pyrender's ``from_trimesh`` drops vertex colours when a material is given."""
    import pyrender

    vertex_colors = None
    if material.get("use_vertex_colors", True) and mesh.visual.kind == "vertex":
        vertex_colors = np.asarray(mesh.visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    base = [*material["base_color"], 1.0] if vertex_colors is None else [1.0, 1.0, 1.0, 1.0]
    pr_material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=base, metallicFactor=material["metallic"], roughnessFactor=material["roughness"],
        alphaMode="OPAQUE", doubleSided=material.get("double_sided", True),
    )
    faces = np.asarray(mesh.faces)
    if material.get("smooth_shading", False):
        positions, normals, indices = mesh.vertices, mesh.vertex_normals, faces
        colors = vertex_colors
    else:  # flat: one normal per face, vertices unshared
        positions = mesh.vertices[faces].reshape(-1, 3)
        normals = np.repeat(mesh.face_normals, 3, axis=0)
        indices = None
        colors = None if vertex_colors is None else vertex_colors[faces].reshape(-1, 3)
    primitive = pyrender.Primitive(
        positions=np.asarray(positions, dtype=np.float32), normals=np.asarray(normals, dtype=np.float32),
        color_0=colors, indices=indices, material=pr_material, mode=pyrender.constants.GLTF.TRIANGLES,
    )
    return pyrender.Mesh([primitive])


class SceneRenderer:
    """One OpenGL context and one scene, reused for every view of every mesh.

    Parameters
    ----------
    image_size : int
        Square image side in pixels (fixed for the renderer's life: OSMesa has no
        resizable framebuffer, so a new size means a new context).
    backend : {"auto", "osmesa", "egl"}
        See :func:`select_platform`.
    """

    def __init__(self, image_size: int, backend: str = "auto"):
        self.platform = select_platform(backend)
        try:
            import pyrender

            self._offscreen = _make_offscreen_class()(image_size, image_size)
        except RenderBackendError:
            raise
        except Exception as exc:  # ctypes/GL errors come in many types
            raise RenderBackendError(
                f"could not start OpenGL with PYOPENGL_PLATFORM={self.platform}: {type(exc).__name__}: {exc}. "
                "For osmesa install libosmesa6; for egl the NVIDIA EGL vendor files (10_nvidia.json) must be present"
            ) from exc
        self.image_size = int(image_size)
        self.gl_renderer = self._gl_string()
        log.info("OpenGL renderer: %s (platform %s)", self.gl_renderer, self.platform)
        if self.platform == "egl" and self.software:
            # libEGL picks Mesa's CPU driver when the NVIDIA vendor file (10_nvidia.json) or the GPU is missing
            log.warning("EGL is rendering in software (%s): the NVIDIA EGL vendor files or the GPU are not visible "
                        "to this container; expect CPU speed", self.gl_renderer)
        self._scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.0, 0.0, 0.0])
        self._camera = pyrender.IntrinsicsCamera(fx=1.0, fy=1.0, cx=0.0, cy=0.0, znear=0.01, zfar=100.0)
        self._camera_node = self._scene.add(self._camera, pose=np.eye(4))
        self._light_nodes: list = []
        self._mesh_node = None
        self._mesh_token: Any = None
        self._canonical: tuple | None = None  # (key, RenderedView) of the last canonical render of a planar record

    def _gl_string(self) -> str:
        from OpenGL import GL

        self._offscreen._platform.make_current()
        name = GL.glGetString(GL.GL_RENDERER)
        version = GL.glGetString(GL.GL_VERSION)
        return f"{name.decode() if name else '?'} / OpenGL {version.decode() if version else '?'}"

    @property
    def software(self) -> bool:
        """True when the GL driver rasterises on the CPU (llvmpipe, softpipe, swrast)."""
        name = self.gl_renderer.lower()
        return any(driver in name for driver in SOFTWARE_DRIVERS)

    @property
    def shader_cache(self):
        """The renderer's shader-program cache (its size stays constant once warm)."""
        return self._offscreen._renderer._program_cache

    def set_mesh(self, mesh: trimesh.Trimesh, material: dict, token: Any = None) -> None:
        """Upload ``mesh`` (replacing the previous one) unless ``token`` says it is already loaded.

        Parameters
        ----------
        mesh : trimesh.Trimesh
        material : dict
            A record's ``material`` (base_color, metallic, roughness, use_vertex_colors, smooth_shading).
        token : hashable, optional
            Identity of (mesh, material); the same non-None token skips the upload.
        """
        if token is not None and token == self._mesh_token:
            return
        check_mesh(mesh)
        material = validate_material(material)
        # build first, then swap: a failure leaves the previous mesh loaded and the scene consistent
        built = _pyrender_mesh(mesh, material)
        old = self._mesh_node
        self._mesh_node = self._scene.add(built, pose=np.eye(4))
        if old is not None:
            self._scene.remove_node(old)
        self._mesh_token = token
        self._canonical = None

    def render(self, record: dict) -> RenderedView:
        """Render the loaded mesh as ``record`` describes (camera, lights, ambient, object pose, background).

        A record with a ``planar`` block (FlatWorld) is rendered canonically, then warped in the image plane
        (:mod:`.planar`). Its canonical render is kept while the mesh token and the canonical scene stay the
        same, so a FlatWorld mesh is drawn by OpenGL once and only warped for its other views.
        """
        if self._mesh_node is None:
            raise RuntimeError("no mesh loaded: call set_mesh first")
        validate_record(record)  # before the scene changes: a bad record must not poison the next one
        size = int(record["image_size"])
        if size != self.image_size:
            raise ValueError(f"record image_size {size} differs from this renderer's {self.image_size}")
        planar = record.get("planar")
        if planar is None:
            return self._render_canonical(record)
        from services.render.renderers.planar import warp_view

        key = None
        if self._mesh_token is not None:
            key = (self._mesh_token, json.dumps({k: record.get(k) for k in CANONICAL_FIELDS}, sort_keys=True))
        if key is None or self._canonical is None or self._canonical[0] != key:
            self._canonical = (key, self._render_canonical(record))
        view = self._canonical[1]
        background = background_image(record["background"], size)
        rgb, depth, mask = warp_view(view.rgb, view.depth, planar["matrix"], background)
        return RenderedView(rgb=rgb, depth=depth, mask=mask)

    def _render_canonical(self, record: dict) -> RenderedView:
        import pyrender

        size = int(record["image_size"])
        camera = record["camera"]
        k = camera["intrinsics"]
        # Everything that can fail is built before the scene changes (the record was validated, but a
        # pyrender refusal must not leave the shared scene half-updated either).
        camera_pose = np.asarray(camera["pose"], dtype=float)
        object_pose = np.asarray(record["object"]["pose"], dtype=float)
        lights = [pyrender.Node(light=_make_light(light, pyrender), matrix=np.asarray(light["pose"], dtype=float))
                  for light in record["lights"]]
        kinds = [light["kind"] for light in record["lights"]]
        self._camera.fx, self._camera.fy, self._camera.cx, self._camera.cy = k["fx"], k["fy"], k["cx"], k["cy"]
        self._camera.znear, self._camera.zfar = camera["znear"], camera["zfar"]
        self._scene.set_pose(self._camera_node, camera_pose)
        self._scene.set_pose(self._mesh_node, object_pose)
        self._scene.ambient_light = np.full(3, float(record["ambient"]))
        self.shader_cache.shading = record["material"].get("shading", "pbr")
        self.shader_cache.light_counts = (kinds.count("directional"), kinds.count("point"), kinds.count("spot"))
        for node in self._light_nodes:
            self._scene.remove_node(node)
        self._light_nodes = []
        for node in lights:
            self._scene.add_node(node)
            self._light_nodes.append(node)
        color, depth = self._offscreen.render(self._scene)
        mask = depth > 0
        depth = np.where(mask, depth, np.float32(np.inf)).astype(np.float32)
        rgb = np.ascontiguousarray(color[..., :3])
        background = background_image(record["background"], size)
        rgb = np.where(mask[..., None], rgb, background)
        return RenderedView(rgb=rgb, depth=depth, mask=mask)

    def close(self) -> None:
        if self._offscreen is not None:
            self._offscreen.delete()
            self._offscreen = None

    def __enter__(self) -> "SceneRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make_light(light: dict, pyrender):
    color = np.asarray(light["color"], dtype=float)
    if light["kind"] == "directional":
        return pyrender.DirectionalLight(color=color, intensity=light["intensity"])
    if light["kind"] == "point":
        return pyrender.PointLight(color=color, intensity=light["intensity"])
    return pyrender.SpotLight(color=color, intensity=light["intensity"],
                              innerConeAngle=light["inner_cone"], outerConeAngle=light["outer_cone"])


def background_image(background: dict, size: int) -> np.ndarray:
    """(size, size, 3) uint8 background described by a record's ``background``."""
    color = np.asarray(background["color"], dtype=float)
    if background["kind"] == "plain":
        return np.broadcast_to(np.round(color * 255).astype(np.uint8), (size, size, 3))
    from services.render.renderers.noise import perlin_texture

    value = perlin_texture(size, background["noise_scale"], background["noise_seed"])  # (size, size) in [0,1]
    tint = color if color.max() > 0 else np.array([1.0, 1.0, 1.0])
    return np.round(value[..., None] * tint * 255).astype(np.uint8)
