"""FlatWorldDB: no pose or illumination variation, but as many distinct images per class as the 3D datasets."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import trimesh

from services.common.spec.experiment import load_spec, parse_spec
from services.common.spec.render import PlanarVariationSpec, RenderSettings
from services.render.job import run_job
from services.render.renderers.gl import mesh_frame
from services.render.sampling import sample_view
from services.render.api import DEPTH_PRECISION_M, decode_depth
from services.render.views import decode_png, get_renderer, redraw_record, render_record

from .meshdata import primitive_meshes, write_meshes

ROOT = Path(__file__).resolve().parents[2]


def flatworld_spec(experiment: str, image_size: int = 32, views: int = 24):
    """A tiny experiment with the named spec's FlatWorld render settings (scaled down) over hand-made meshes."""
    full = load_spec(ROOT / "experiments" / experiment).dataset("flatworld").render
    render = full.model_dump(mode="json") | {"image_size": image_size, "views_per_instance": views, "shard_size": 40}
    source = {"image_size": image_size, "views_per_instance": views, "shard_size": 40}
    return parse_spec({"name": "flat", "seed": 5, "datasets": [
        {"name": "shapes", "family": {"family": "procsynth"}, "classes": 2, "instances_per_class": 2, "render": source},
        {"name": "flatworld", "family": {"family": "procsynth"}, "classes": 2, "instances_per_class": 2,
         "meshes_from": "shapes", "render": render},
    ]})


def samples(store, dataset_id: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for key in sorted(store.list(f"datasets/{dataset_id}/")):
        if key.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(store.get_bytes(key))) as tar:
                for m in tar.getmembers():
                    name, ext = m.name.split(".", 1)
                    out.setdefault(name, {})[ext] = tar.extractfile(m).read()
    return out


def test_both_specs_give_flatworld_2d_variation_and_no_3d_variation():
    for experiment in ("beyond-flatland.yaml", "quickstart.yaml"):
        render = load_spec(ROOT / "experiments" / experiment).dataset("flatworld").render
        assert not render.pose_variation and not render.illumination_variation
        assert render.planar_variation.enabled
    assert not RenderSettings().planar_variation.enabled  # off unless asked for: other datasets unchanged


def test_flatworld_classes_hold_as_many_distinct_images_as_samples(store):
    for experiment in ("beyond-flatland.yaml", "quickstart.yaml"):
        spec = flatworld_spec(experiment)
        prims = primitive_meshes()
        write_meshes(store, spec, "shapes", {(c, i): prims[2 * c + i] for c in range(2) for i in range(2)})
        run_job(spec, store)
        files = samples(store, spec.dataset_id("flatworld"))
        assert len(files) == 2 * 2 * 24
        per_class: dict[int, set[str]] = {}
        counts: dict[int, int] = {}
        canonical: dict[tuple[int, int], set[str]] = {}
        for name, sample in files.items():
            record = json.loads(sample["json"])
            cls = record["class_index"]
            counts[cls] = counts.get(cls, 0) + 1
            per_class.setdefault(cls, set()).add(hashlib.sha256(sample["rgb.png"]).hexdigest())
            # one canonical scene per mesh: camera, lights and scale are frozen, only the 2D map varies
            canonical.setdefault((cls, record["instance"]), set()).add(json.dumps([record["camera"], record["lights"], record["object"]["scale"]]))
            assert set(record["planar"]) >= {"flip", "rotation_deg", "scale", "shear_deg", "translate", "matrix"}
            depth, mask, seg = decode_depth(sample["depth.png"]), decode_png(sample["mask.png"]), decode_png(sample["seg.png"])
            assert np.array_equal(mask == 255, np.isfinite(depth)) and np.array_equal(seg == cls + 1, mask == 255)
        assert len(canonical) == 4 and all(len(scenes) == 1 for scenes in canonical.values())
        for cls in counts:
            assert len(per_class[cls]) >= counts[cls] - 1, (experiment, cls, len(per_class[cls]), counts[cls])
        # the record alone re-draws the stored image and its depth
        name = sorted(files)[7]
        record = json.loads(files[name]["json"])
        again = render_record(record, store=store)
        assert np.array_equal(again.rgb, decode_png(files[name]["rgb.png"]))
        stored = decode_depth(files[name]["depth.png"])
        assert np.array_equal(np.isfinite(again.depth), np.isfinite(stored))
        seen = np.isfinite(stored)
        assert np.array_equal(np.isfinite(again.depth), seen)
        assert np.abs(again.depth[seen] - stored[seen]).max() <= DEPTH_PRECISION_M + 1e-6
        assert np.array_equal(redraw_record(record, store=store), decode_png(files[name]["rgb.png"]))


def test_depth_and_labels_move_with_the_rgb():
    """A flip-only variant is the canonical render mirrored, pixel for pixel, in every channel."""
    knob = trimesh.creation.icosphere(subdivisions=2, radius=0.4)
    knob.apply_translation((0.9, 0.5, 0))
    mesh = trimesh.util.concatenate([trimesh.creation.box(extents=(1.6, 0.8, 0.5)), knob])  # not mirror-symmetric
    centre, radius = mesh_frame(mesh)
    fixed = {"dist": "fixed"}
    planar = PlanarVariationSpec(enabled=True, flip_probability=1.0, rotation_deg=fixed | {"value": 0},
                                 scale=fixed | {"value": 1}, shear_deg=fixed | {"value": 0}, translate=fixed | {"value": 0})
    base = RenderSettings(image_size=48, pose_variation=False, illumination_variation=False)
    flipped = base.model_copy(update={"planar_variation": planar})
    kw = dict(root_seed=1, dataset_id="f", class_index=0, instance=0, view=3, mesh_centre=centre, mesh_radius=radius)
    a, b = sample_view(base, **kw), sample_view(flipped, **kw)
    assert b["planar"]["flip"] and "planar" not in a
    renderer = get_renderer(48)
    renderer.set_mesh(mesh, a["material"])
    va, vb = renderer.render(a), renderer.render(b)
    assert np.array_equal(vb.rgb, va.rgb[:, ::-1]) and np.array_equal(vb.depth, va.depth[:, ::-1])
    assert np.array_equal(vb.mask, va.mask[:, ::-1]) and not np.array_equal(va.mask, vb.mask)
    # a general map: labels stay labels (nearest neighbour), the mask is where depth is finite
    general = base.model_copy(update={"planar_variation": PlanarVariationSpec(enabled=True)})
    for view in range(4):
        record = sample_view(general, **(kw | {"view": view}))
        v = renderer.render(record)
        assert np.array_equal(v.mask, np.isfinite(v.depth))
        assert set(np.unique(v.depth[v.mask])) <= set(np.unique(va.depth[va.mask]))
        assert np.all(v.rgb[~v.mask] == 0)
