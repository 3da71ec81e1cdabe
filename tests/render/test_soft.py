"""The differentiable soft silhouette rasteriser: agreement with pyrender, gradients, memory, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from services.common.spec.render import RenderSettings
from services.render.renderers.soft import (
    SoftRasterError, cameras_from_records, hard_silhouette, soft_silhouette,
)
from services.render.sampling import direction, intrinsics, look_at, sample_view

ROOT = Path(__file__).resolve().parents[2]


def orbit_records(n: int, size: int, distance: float = 3.0, fov: float = 40.0) -> list[dict]:
    records = []
    for i in range(n):
        pose = look_at(direction(-170 + 360 * i / n, 5 + 60 * i / n) * distance, np.zeros(3))
        records.append({"image_size": size, "camera": {"pose": pose.tolist(), "intrinsics": intrinsics(size, fov),
                                                       "znear": 0.1}, "object": {"pose": np.eye(4).tolist()}})
    return records


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_hard_limit_matches_pyrender_on_a_procsynth_mesh():
    """sigma -> 0: the soft silhouette is pyrender's mask from the same recorded camera (IoU >= 0.99)."""
    from services.meshgen.registry import get_family
    from services.render.renderers.gl import SceneRenderer, mesh_frame

    family = get_family("procsynth")
    mesh = family.generate_item(family.parse_params({}), 0, 0, 0).obj
    settings = RenderSettings(image_size=128)
    centre, radius = mesh_frame(mesh)
    records = [sample_view(settings, root_seed=0, dataset_id="d", class_index=0, instance=0, view=v,
                           mesh_centre=centre, mesh_radius=radius) for v in range(4)]
    with SceneRenderer(128, "osmesa") as renderer:
        renderer.set_mesh(mesh, records[0]["material"])
        truth = np.stack([renderer.render(r).mask for r in records])
    ours = hard_silhouette(mesh.vertices, mesh.faces, cameras_from_records(records))
    soft = soft_silhouette(torch.as_tensor(mesh.vertices, dtype=torch.float64), torch.as_tensor(mesh.faces),
                           cameras_from_records(records, torch.float64), sigma=1e-6).numpy()
    for view in range(4):
        assert truth[view].sum() > 500  # the object is in the picture
        assert iou(truth[view], ours[view]) >= 0.99
        assert iou(truth[view], soft[view] > 0.5) >= 0.99
    # and a shifted camera would not agree: the test can fail
    moved = [json.loads(json.dumps(r)) for r in records]
    for r in moved:
        r["camera"]["intrinsics"]["cx"] += 6
    assert iou(truth[0], hard_silhouette(mesh.vertices, mesh.faces, cameras_from_records(moved))[0]) < 0.95


def test_soft_silhouette_is_a_probability_and_sharpens_with_sigma():
    mesh = trimesh.creation.icosphere(2)
    cams = cameras_from_records(orbit_records(2, 32))
    v, f = torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces)
    hard = hard_silhouette(mesh.vertices, mesh.faces, cams)
    blurry = soft_silhouette(v, f, cams, sigma=4.0)
    sharp = soft_silhouette(v, f, cams, sigma=1e-3)
    assert blurry.min() >= 0 and blurry.max() <= 1
    err = lambda s: float(((s > 0.5).numpy() != hard).mean())  # noqa: E731
    assert float((sharp - torch.as_tensor(hard, dtype=torch.float32)).abs().mean()) < float(
        (blurry - torch.as_tensor(hard, dtype=torch.float32)).abs().mean())
    assert err(sharp) < 0.002 < err(blurry)  # the union of many faces near the rim dilates a blurry silhouette
    # chunking changes nothing
    small = soft_silhouette(v, f, cams, sigma=4.0, chunk_pairs=100)
    assert torch.allclose(small, blurry, atol=1e-5)


def test_gradients_match_finite_differences():
    mesh = trimesh.creation.icosphere(0)
    rng = np.random.default_rng(0)
    v = torch.tensor(mesh.vertices * 0.8 + rng.normal(0, 0.05, mesh.vertices.shape), dtype=torch.float64,
                     requires_grad=True)
    f = torch.as_tensor(mesh.faces)
    cams = cameras_from_records(orbit_records(2, 12), torch.float64)
    for chunk in (1 << 21, 50):  # one pass, and chunks recomputed in the backward pass
        assert torch.autograd.gradcheck(lambda x: soft_silhouette(x, f, cams, sigma=2.0, chunk_pairs=chunk), (v,),
                                        eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)
    # a nudge outwards grows the silhouette: the gradient has the right sign, not just the right size
    s = soft_silhouette(v, f, cams, sigma=2.0).sum()
    (grad,) = torch.autograd.grad(s, v)
    assert float((grad * v.detach()).sum()) > 0


# Peak memory from VmHWM (this process image's high-water mark): ru_maxrss would carry over the forking
# parent's size through exec (3.5 GiB inside a full pytest run).
MEMORY_SCRIPT = """
import sys, time, numpy as np, torch, trimesh
def hwm_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.render.test_soft import orbit_records
from services.render.renderers.soft import cameras_from_records, soft_silhouette
mesh = trimesh.creation.icosphere(5)
faces = torch.as_tensor(mesh.faces[:10_000])
v = torch.tensor(mesh.vertices * 1.05, dtype=torch.float32, requires_grad=True)
cams = cameras_from_records(orbit_records(20, 128))
base = hwm_kib()
t = time.perf_counter()
s = soft_silhouette(v, faces, cams)
s.sum().backward()
print(base, hwm_kib(), time.perf_counter() - t, float(s.sum()), float(v.grad.abs().sum()))
"""


def test_10k_faces_20_views_128px_forward_and_backward_fit_in_2_gib():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(root=str(ROOT))], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout.split()
    base_kib, peak_kib, seconds, area, grad = (float(x) for x in out)
    assert area > 20 * 128 * 128 * 0.3 and grad > 0  # the sphere fills a good part of every view and has gradients
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB (torch itself: {base_kib / 1024:.0f} MiB)"


@pytest.mark.parametrize("call, message", [
    (lambda v, f, c: soft_silhouette(v[:, :2], f, c), "vertices"),
    (lambda v, f, c: soft_silhouette(v, f + 100, c), "faces: indices"),
    (lambda v, f, c: soft_silhouette(v, f.float(), c), "faces"),
    (lambda v, f, c: soft_silhouette(v * float("nan"), f, c), "NaN"),
    (lambda v, f, c: soft_silhouette(v, f, c, sigma=0), "sigma"),
    (lambda v, f, c: cameras_from_records([]), "at least one"),
    (lambda v, f, c: cameras_from_records([{"image_size": 8, "camera": {}}]), "records[0]"),
    (lambda v, f, c: cameras_from_records([{**orbit_records(1, 8)[0], "planar": {"matrix": [[1, 0, 0], [0, 1, 0]]}}]),
     "planar"),
])
def test_bad_input_is_named(call, message):
    mesh = trimesh.creation.icosphere(0)
    v, f = torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces)
    with pytest.raises(SoftRasterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(v, f, cameras_from_records(orbit_records(1, 8)))
