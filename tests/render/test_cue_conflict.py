"""Cue-conflict renders: the shape of class A, the surface appearance of class B, labelled with both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from services.common.errors import SpecError
from services.common.spec.experiment import parse_spec
from services.render.job import run_job
from services.render.renderers.gl import mesh_frame
from services.render.renderers.texture import class_texture, object_points, transfer_albedo
from services.render.sampling import sample_view
from services.common.spec.render import ClassTextureSpec, RenderSettings
from services.render.views import decode_png, get_renderer, render_record

from .meshdata import write_meshes
from .test_flatworld import samples

TEXTURE = {"enabled": True, "seed": 4}


def _meshes() -> list[trimesh.Trimesh]:
    return [trimesh.creation.box(extents=(1.6, 0.5, 0.5)), trimesh.creation.icosphere(subdivisions=2),
            trimesh.creation.annulus(r_min=0.3, r_max=0.8, height=0.3)]


def conflict_spec(family: str = "procsynth", texture: dict | None = TEXTURE, views: int = 4):
    render = {"image_size": 40, "views_per_instance": views, "shard_size": 50, "val_fraction": 0.0}
    if texture is not None:
        render["class_texture"] = texture
    return parse_spec({"name": "cc", "seed": 2, "datasets": [
        {"name": "cues", "family": {"family": family}, "classes": 3, "instances_per_class": 1, "render": render},
        {"name": "conflict", "family": {"family": family}, "classes": 3, "instances_per_class": 1,
         "meshes_from": "cues", "render": render | {"cue_conflict": True}},
    ]})


def test_spec_refuses_conflicts_that_cannot_be_drawn():
    base = {"name": "x", "datasets": [{"name": "a", "family": {"family": "procsynth"}, "classes": 3,
                                       "render": {"cue_conflict": True}}]}
    with pytest.raises(SpecError, match="procsynth classes are all grey.*class_texture"):
        parse_spec(base)
    one = json.loads(json.dumps(base))
    one["datasets"][0] |= {"classes": 1, "render": {"cue_conflict": True, "class_texture": {"enabled": True}}}
    with pytest.raises(SpecError, match="at least 2 classes"):
        parse_spec(one)
    flat = json.loads(json.dumps(base))
    flat["datasets"][0]["render"] = {"class_texture": {"enabled": True}, "planar_variation": {"enabled": True}}
    with pytest.raises(SpecError, match="class_texture: not with planar_variation"):
        parse_spec(flat)
    bad = json.loads(json.dumps(base))
    bad["datasets"][0]["render"] = {"class_texture": {"enabled": True, "frequency": [3, 1]}}
    with pytest.raises(SpecError, match="frequency"):
        parse_spec(bad)
    assert not RenderSettings().cue_conflict and not RenderSettings().class_texture.enabled


def test_back_projection_lands_on_the_surface():
    """Each object pixel's depth, through the record's camera, gives a point on the mesh (the texture's domain)."""
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    centre, radius = mesh_frame(mesh)
    renderer = get_renderer(48)
    for view in range(3):
        record = sample_view(RenderSettings(image_size=48), root_seed=1, dataset_id="b", class_index=0, instance=0,
                             view=view, mesh_centre=centre, mesh_radius=radius)
        renderer.set_mesh(mesh, record["material"])
        rendered = renderer.render(record)
        points = object_points(record, rendered.depth)[rendered.mask] * radius + centre
        on_face = np.abs(np.abs(points).max(axis=1) - 0.5)  # a unit cube's surface: max |coordinate| = 0.5
        assert np.percentile(on_face, 95) < 0.02 and np.median(on_face) < 0.01


def test_textures_depend_on_seed_and_class_only():
    a, b = ClassTextureSpec(enabled=True, seed=4), ClassTextureSpec(enabled=True, seed=5)
    assert class_texture(a, 2) == class_texture(a.model_dump(), 2)
    assert class_texture(a, 2) != class_texture(a, 1) and class_texture(a, 2) != class_texture(b, 2)


def _object_colour(sample: dict) -> np.ndarray:
    rgb = decode_png(sample["rgb.png"]).astype(float)
    mask = decode_png(sample["mask.png"]) == 255
    chroma = rgb[mask] / np.maximum(rgb[mask].sum(1, keepdims=True), 1.0)  # shading-free colour
    return chroma.mean(0)


def test_conflict_images_show_the_shape_of_a_and_the_texture_of_b(store):
    spec = conflict_spec()
    write_meshes(store, spec, "cues", {(c, 0): m for c, m in enumerate(_meshes())})
    run_job(spec, store)
    cues = samples(store, spec.dataset_id("cues"))
    conflict = samples(store, spec.dataset_id("conflict"))
    assert len(cues) == len(conflict) == 3 * 4
    colour = {c: np.mean([_object_colour(s) for s in cues.values() if json.loads(s["json"])["class_index"] == c], 0)
              for c in range(3)}
    pairs = set()
    for name, sample in conflict.items():
        record = json.loads(sample["json"])
        a, b = record["shape_class"], record["texture_class"]
        assert a == record["class_index"] == int(sample["cls"]) == int(name[:5]) and record["cue_conflict"]
        assert b != a and record["class_texture"]["class"] == b
        pairs.add((a, b))
        # texture: the object's colour is class B's (as the non-conflict twin shows B), not A's
        seen = _object_colour(sample)
        assert np.linalg.norm(seen - colour[b]) < np.linalg.norm(seen - colour[a]), (name, a, b)
        # shape: the silhouette is A's mesh under this record's camera, not B's
        mask = decode_png(sample["mask.png"]) == 255
        assert np.array_equal(render_record(record, mesh=_meshes()[a]).mask, mask)
        assert not np.array_equal(render_record(record, mesh=_meshes()[b]).mask, mask)
        # the record alone re-draws the image
        assert np.array_equal(render_record(record, store=store).rgb, decode_png(sample["rgb.png"]))
    assert pairs == {(a, b) for a in range(3) for b in range(3) if a != b}  # every shape meets every other texture
    for sample in cues.values():
        record = json.loads(sample["json"])
        assert record["texture_class"] == record["shape_class"] == record["class_index"] and not record["cue_conflict"]


def _painted(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    colours = np.tile(np.array([*rgb, 255], dtype=np.uint8), (len(mesh.vertices), 1))
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colours, process=False)


def test_morphsynth_conflict_carries_the_albedo_of_b(store):
    red, green, blue = (220, 30, 30), (30, 220, 30), (30, 30, 220)
    meshes = [_painted(m, c) for m, c in zip(_meshes(), (red, green, blue))]
    moved = transfer_albedo(meshes[0], meshes[2])
    assert np.array_equal(moved.vertices, meshes[0].vertices) and (moved.visual.vertex_colors[:, 2] == 220).all()
    with pytest.raises(ValueError, match="no per-vertex colours"):
        transfer_albedo(meshes[0], trimesh.creation.box())
    spec = conflict_spec("morphsynth", texture=None, views=2)
    write_meshes(store, spec, "cues", {(c, 0): m for c, m in enumerate(meshes)})
    run_job(spec, store)
    for sample in samples(store, spec.dataset_id("conflict")).values():
        record = json.loads(sample["json"])
        a, b = record["shape_class"], record["texture_class"]
        assert a != b and record["albedo_from"].endswith(f"/{b:05d}/0.glb")
        assert int(np.argmax(_object_colour(sample))) == b  # red, green, blue: B's colour channel dominates
        assert np.array_equal(render_record(record, mesh=meshes[a], store=store).mask, decode_png(sample["mask.png"]) == 255)
