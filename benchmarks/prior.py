"""train: steps per second of the 3D-prior objective, and where a step's time goes.

Geometry: the quickstart's 3D-prior run (``experiments/quickstart.yaml``, the first run with
``objective: 3d_prior``): its model, input size, batch size and ``prior`` settings; ``--published``
uses the published settings instead (ResNet-50 at 224, triplanes 128 x 128 x 32, 16 + 16 samples,
``render_size`` 64, batch 64: meant for a GPU). Inputs are random images with rays of a 40 degree camera
(the time of a step does not depend on the pixels).

Timed (medians over ``--repeats`` after ``--warmup`` steps, torch on ``--threads`` threads, 1 by default):

- ``prior_steps_per_s``: whole training steps (forward, the loss, backward, Adam);
- the split of a step: ``backbone_s`` (backbone forward + backward, the frozen copy's forward),
  ``decoder_s`` (triplane decoder forward + backward from the image tokens), ``renderer_s`` (the
  radiance field queried at every sample, importance sampling, compositing; forward + backward from
  the triplanes), each timed alone, and their shares of the sum (``*_share``);
- baseline ``prior_baseline_supervised_steps_per_s``: a supervised step (cross-entropy, SGD) of the same
  torchvision model at the same input size and batch, the step the 3D prior replaces.

Target (issue 17): the volume renderer must not dominate a step (``renderer_share`` < 0.5).
Prints readable lines, then LAST one JSON line.

Run: ``.venv/bin/python benchmarks/prior.py [--repeats 7] [--published] [--device cuda]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.nn import functional as F

from services.common.spec.experiment import load_spec, parse_spec
from services.train.objectives import objective_for
from services.train.objectives.prior3d import ray_directions, render_rays

HERE = Path(__file__).resolve().parent


def prior_run(published: bool):
    if published:
        spec = parse_spec({"name": "bench", "datasets": [{"name": "d", "family": {"family": "procsynth"}}],
                           "pretrain": [{"name": "p", "datasets": ["d"], "objective": "3d_prior", "batch_size": 64}]})
        return spec.pretrain[0]
    spec = load_spec(HERE.parent / "experiments" / "quickstart.yaml")
    return next(r for r in spec.pretrain if r.task == "3d_prior")


def timed(fn, repeats: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--published", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run = prior_run(args.published)
    prior, n, size = run.prior, run.batch_size, run.input_size
    torch.manual_seed(0)
    objective = objective_for(run)
    model = objective.build_model(8).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=run.optim.lr)
    x = torch.randn(n, 3, size, size, device=device)
    k = np.array([0.5 * size / math.tan(math.radians(20))] * 2 + [size / 2] * 2)
    rays = ray_directions(k, np.array([[1.0, 0, 0], [0, 1.0, 0]]), None, size, prior.render_size)
    directions = torch.from_numpy(np.repeat(rays[None], n, 0)).float().to(device)
    s = prior.render_size
    targets = {"rgb": torch.rand(n, 3, s, s, device=device), "depth": torch.full((n, s * s), 1.0, device=device),
               "mask": torch.ones(n, s * s, dtype=torch.bool, device=device),
               "distance": torch.full((n,), 3.0, device=device), "directions": directions}

    def step():
        loss = objective.loss(objective.forward(model, x, targets), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def backbone():
        tokens, _ = model.backbone(x)
        if model.teacher is not None:
            with torch.no_grad():
                model.teacher(x)
        tokens.float().square().mean().backward()

    with torch.no_grad():
        tokens, grid = model.backbone(x)
    tokens = tokens.detach().requires_grad_()

    def decoder():
        out = model.decoder(tokens, grid)
        (out[0].mean() + out[1].mean() if isinstance(out, tuple) else out.square().mean()).backward()

    split = {"backbone_s": timed(backbone, args.repeats, args.warmup, sync),
             "decoder_s": timed(decoder, args.repeats, args.warmup, sync)}
    if model.field is not None:
        with torch.no_grad():
            planes = model.decoder(tokens, grid).float()
        planes = planes.detach().requires_grad_()
        centre, h = torch.tensor([0.0, 0.0, -1.0], device=device), prior.box_half_size

        def renderer():
            out = render_rays(lambda p: model.field(planes, (p - centre) / h), directions, 1 - h, 1 + h,
                              prior.samples_per_ray, prior.importance_samples, stratified=True)
            (out["rgb"].mean() + out["depth"].mean() + out["densities"].abs().mean()).backward()

        split["renderer_s"] = timed(renderer, args.repeats, args.warmup, sync)
    step_s = timed(step, args.repeats, args.warmup, sync)

    torch.manual_seed(0)
    classifier = torchvision.models.get_model(run.model, weights=None, num_classes=8).to(device).train()
    sgd = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9)
    labels = torch.randint(0, 8, (n,), device=device)

    def supervised():
        loss = F.cross_entropy(classifier(x), labels)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    classification_s = timed(supervised, args.repeats, args.warmup, sync)
    total = sum(split.values())
    result = {
        "geometry": "published" if args.published else "quickstart", "device": str(device), "threads": args.threads,
        "model": run.model, "input_size": size, "batch_size": n, "decoder": prior.decoder,
        "triplane": f"{prior.triplane_resolution}x{prior.triplane_resolution}x3x{prior.triplane_channels}",
        "rays_per_image": s * s, "samples_per_ray": prior.samples_per_ray + prior.importance_samples,
        "prior_steps_per_s": round(1.0 / step_s, 3), "prior_step_s": round(step_s, 4),
        "prior_baseline_supervised_steps_per_s": round(1.0 / classification_s, 3),
        "prior_over_classification": round(step_s / classification_s, 2),
        **{key: round(value, 4) for key, value in split.items()},
        **{key.replace("_s", "_share"): round(value / total, 3) for key, value in split.items()},
    }
    print(f"3D prior ({result['geometry']} geometry, {run.model} at {size} px, batch {n}, {result['triplane']} "
          f"triplanes, {s}x{s} rays x {result['samples_per_ray']} samples) on {device}, {args.threads} thread(s)")
    print(f"  step {step_s * 1000:.1f} ms = {1 / step_s:.2f} steps/s; supervised baseline {classification_s * 1000:.1f} ms "
          f"({step_s / classification_s:.2f}x)")
    print("  split: " + ", ".join(f"{k[:-2]} {v * 1000:.1f} ms ({v / total:.0%})" for k, v in split.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
