"""Resident memory stays flat over thousands of renders (the OSMesa shader-cache leak is fixed)."""

from __future__ import annotations

import gc

import numpy as np
import psutil
import trimesh

from services.common.spec.render import RenderSettings
from services.render.renderers.gl import mesh_frame
from services.render.sampling import sample_view
from services.render.views import get_renderer

FRAMES = 3000


def test_rss_growth_is_small_over_thousands_of_frames():
    settings = RenderSettings(image_size=32)
    meshes = [trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=2)]
    frames = [(m, *mesh_frame(m)) for m in meshes]
    renderer = get_renderer(32)
    records = [sample_view(settings, root_seed=0, dataset_id="mem", class_index=0, instance=0, view=v,
                           mesh_centre=frames[0][1], mesh_radius=frames[0][2]) for v in range(50)]

    def render_many(n: int) -> None:
        for i in range(n):
            mesh, _, _ = frames[(i // 500) % 2]  # swap meshes now and then: uploads are freed too
            renderer.set_mesh(mesh, records[0]["material"], token=id(mesh))
            view = renderer.render(records[i % len(records)])
            assert view.mask.any()

    render_many(300)  # warm up: shaders, buffers, allocator pools
    gc.collect()
    before = psutil.Process().memory_info().rss
    programs = len(renderer.shader_cache)
    render_many(FRAMES)
    gc.collect()
    growth = psutil.Process().memory_info().rss - before
    assert len(renderer.shader_cache) == programs
    # the unfixed cache leaked ~3 MB per render (GBs here); allow allocator noise only
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over {FRAMES} renders"
