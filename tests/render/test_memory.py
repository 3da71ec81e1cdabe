"""Resident memory stays flat over thousands of renders (the OSMesa shader-cache leak is fixed)."""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest
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


def test_renderer_pool_is_an_lru_of_bounded_size(monkeypatch):
    """Many distinct image sizes keep at most FLATLAND_GL_CONTEXTS contexts alive; evicted ones are freed."""
    from services.render.views import close_renderers, pooled_renderers

    monkeypatch.setenv("FLATLAND_GL_CONTEXTS", "3")
    close_renderers()
    mesh = trimesh.creation.box()
    centre, radius = mesh_frame(mesh)

    def draw(size: int):
        record = sample_view(RenderSettings(image_size=size), root_seed=0, dataset_id="lru", class_index=0,
                             instance=0, view=0, mesh_centre=centre, mesh_radius=radius)
        renderer = get_renderer(size)
        renderer.set_mesh(mesh, record["material"])
        assert renderer.render(record).mask.any()
        return renderer

    first = draw(40)
    assert draw(40) is first  # pooled: the same context
    draw(41)
    gc.collect()
    before = psutil.Process().memory_info().rss
    drawn = [draw(size) for size in range(96, 120)]  # 24 distinct sizes
    gc.collect()
    growth = psutil.Process().memory_info().rss - before
    assert len(pooled_renderers()) == 3
    assert [size for size, _ in pooled_renderers()] == [117, 118, 119]  # least recently used first
    assert first._offscreen is None and all(r._offscreen is None for r in drawn[:-3])  # closed when evicted
    # unbounded, 24 contexts of ~100 px held ~6 MB each (~130 MB here)
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 24 image sizes"
    close_renderers()
    monkeypatch.setenv("FLATLAND_GL_CONTEXTS", "0")
    with pytest.raises(ValueError, match="FLATLAND_GL_CONTEXTS"):
        get_renderer(40)
