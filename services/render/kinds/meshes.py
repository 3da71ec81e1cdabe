"""procsynth and morphsynth samples: views of meshgen's meshes under sampled camera, lights and pose."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from services.common.manifest import verify_bytes
from services.meshgen.api import mesh_key
from services.render.keys import sample_key
from services.render.kinds.registry import DatasetContext, Sample, sample_writer
from services.render.plan import ShardTask, layout
from services.render.renderers.gl import DegenerateMeshError, check_mesh, mesh_frame
from services.render.renderers.texture import class_texture, transfer_albedo
from services.render.sampling import sample_view
from services.render.views import encode_view, get_renderer, load_glb, textured_view

log = logging.getLogger(__name__)


def mesh_records(ctx: DatasetContext, class_index: int, instance: int, views: list[int], mesh) -> list[dict]:
    """The records of some views of one mesh instance."""
    centre, radius = mesh_frame(mesh)
    key = mesh_key(ctx.mesh_dataset_id, class_index, instance)
    return [sample_view(ctx.dataset.render, root_seed=ctx.root_seed, dataset_id=ctx.dataset_id,
                        class_index=class_index, instance=instance, view=v, mesh_centre=centre,
                        mesh_radius=radius, mesh_key=key) for v in views]


def load_instance_mesh(ctx: DatasetContext, class_index: int, instance: int):
    """Load and verify one mesh against meshgen's manifest; raises on missing/corrupt/degenerate meshes."""
    key = mesh_key(ctx.mesh_dataset_id, class_index, instance)
    entry = ctx.upstream_entry(key)
    mesh = load_glb(verify_bytes(entry, ctx.store.get_bytes(key)))
    check_mesh(mesh)
    return mesh


def _group_views(ctx: DatasetContext, task: ShardTask) -> dict[tuple[int, int], list[int]]:
    lay = layout(ctx.dataset)
    groups: dict[tuple[int, int], list[int]] = {}
    for index in range(task.start, task.stop):
        cls, instance, view = lay.sample(task.split, index)
        groups.setdefault((cls, instance), []).append(view)
    return groups


def texture_class(ctx: DatasetContext, class_index: int, instance: int, view: int) -> int:
    """Whose appearance an image wears: its own class, or in a cue-conflict dataset another class B.

    B cycles over the other classes in (instance, view) order, so each shape meets every other
    texture equally often: B = (A + 1 + (instance * views_per_instance + view) mod (classes - 1)) mod classes.
    """
    if not ctx.dataset.render.cue_conflict:
        return class_index
    n = ctx.dataset.classes
    step = (instance * ctx.dataset.render.views_per_instance + view) % (n - 1)
    return (class_index + 1 + step) % n


def render_mesh_samples(ctx: DatasetContext, task: ShardTask) -> Iterator[Sample]:
    """procsynth / morphsynth: each mesh uploaded once, then its views rendered.

    With ``render.class_texture`` each image wears a class's solid texture (its own, or with
    ``render.cue_conflict`` another class's); a morphsynth cue-conflict set without class textures
    carries class B's per-vertex albedo onto class A's mesh (:mod:`~services.render.renderers.texture`).
    Such records hold ``shape_class``, ``texture_class`` and ``cue_conflict``.
    """
    settings = ctx.dataset.render
    textured, conflict = settings.class_texture.enabled, settings.cue_conflict
    material = settings.material.model_dump(mode="json")
    renderer = get_renderer(settings.image_size, settings.backend)
    for (cls, instance), views in _group_views(ctx, task).items():
        try:
            mesh = load_instance_mesh(ctx, cls, instance)
            renderer.set_mesh(mesh, material, token=(ctx.dataset_id, cls, instance))
        except (DegenerateMeshError, ValueError) as exc:
            # reported per item; the rest of the shard goes on
            ctx.failures.append({"item": f"class {cls} instance {instance}", "views": len(views),
                                 "key": mesh_key(ctx.mesh_dataset_id, cls, instance), "message": str(exc)})
            log.warning("skipping class %d instance %d: %s", cls, instance, exc)
            continue
        for record in mesh_records(ctx, cls, instance, views, mesh):
            texture = texture_class(ctx, cls, instance, record["view"])
            if textured or conflict:
                record.update(shape_class=cls, texture_class=texture, cue_conflict=conflict)
            if textured:
                record["class_texture"] = class_texture(settings.class_texture, texture)
            elif conflict:  # morphsynth: class B's own albedo on class A's shape
                donor = mesh_key(ctx.mesh_dataset_id, texture, instance)
                record["albedo_from"] = donor
                renderer.set_mesh(transfer_albedo(mesh, load_instance_mesh(ctx, texture, instance)), material,
                                  token=(ctx.dataset_id, cls, instance, "albedo", texture))
            view = renderer.render(record)
            if textured:
                view = textured_view(view, record)
            yield (sample_key(cls, instance, record["view"]),
                   encode_view(view, cls, json.dumps(record, sort_keys=True).encode("utf-8"),
                               outputs=settings.outputs, rgb_format=settings.rgb_format))


sample_writer("procsynth")(render_mesh_samples)
sample_writer("morphsynth")(render_mesh_samples)
sample_writer("fitted")(render_mesh_samples)
