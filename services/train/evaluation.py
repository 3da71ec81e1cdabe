"""Evaluations of finished pre-training runs that train no network: shape bias and a linear depth probe.

Run by the train stage after transfer (:func:`services.train.evaluate.run_evaluations`). The methods are
in :mod:`services.train.shapebias` and :mod:`services.train.depthprobe`; this module holds what they
share: a finished run's network with its input transform, and the samples of a rendered dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.common.errors import ObjectNotFoundError, SpecError
from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.render.api import RGB_MEMBERS, decode_rgb, find_rgb
from services.train.data import dataset_shards, iter_shard_samples, to_model_input
from services.train.loop import run_prefix
from services.train.models import head_parameter_names, load_verified_checkpoint, logits_of, model_from_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Network:
    """A finished run's network (eval mode, on ``device``) and how its inputs are made."""

    run: str
    run_id: str
    kind: str  # synthetic | torchvision_pretrained
    model_name: str
    num_classes: int
    input_size: int
    mean: tuple
    std: tuple
    module: nn.Module
    head: str | None  # module name of the classification head
    classification: bool  # whether the head was trained as this run's classifier
    device: torch.device

    def inputs(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """(N, H, W, 3) uint8 → normalised (N, 3, h, w) with the shorter side ``size`` (default: the input size)."""
        x = to_model_input(images, self.device, mean=self.mean, std=self.std)
        size = size or self.input_size
        height, width = x.shape[-2:]
        scale = size / min(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
        if target != (height, width):
            x = nn.functional.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def penultimate_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features the head reads, logits) of a uint8 batch; features flattened to (N, D)."""
        if self.head is None:
            raise SpecError(f"run '{self.run}': model {self.model_name} has no single classification head to read "
                            "features before")
        captured: list[torch.Tensor] = []
        hook = self.module.get_submodule(self.head).register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach()))
        try:
            logits = logits_of(self.module(self.inputs(images)))
        finally:
            hook.remove()
        return captured[-1].flatten(1).float().cpu(), logits.float().cpu()


def load_network(spec: ExperimentSpec, store: Store, run: str, *, input_size: int | None = None,
                 device: torch.device | None = None) -> Network:
    """The finished run ``run`` (its verified final checkpoint); :class:`ObjectNotFoundError` until it is done."""
    run_id = spec.run_id(run)
    if not store.exists(f"{run_prefix(run_id)}/done.json"):
        raise ObjectNotFoundError(f"evaluation needs pre-training run '{run}' ({run_id}), which has not finished: "
                                  f"no {run_prefix(run_id)}/done.json")
    ckpt = load_verified_checkpoint(store, run_prefix(run_id))
    run_spec = next(p for p in spec.pretrain if p.name == run)
    if run_spec.task not in ("classification", "3d_prior"):
        raise SpecError(f"evaluation: run '{run}' is a {run_spec.task} network; shape bias and depth probes read "
                        "classification and 3D-prior backbones")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = model_from_checkpoint(ckpt).to(device).eval()
    heads = {key.rsplit(".", 1)[0] for key in head_parameter_names(ckpt["model"], ckpt["input_size"])}
    objective = (ckpt.get("spec") or {}).get("objective", "classification")
    objective = objective.get("kind", "classification") if isinstance(objective, dict) else objective
    return Network(run=run, run_id=run_id, kind=run_spec.kind, model_name=ckpt["model"],
                   num_classes=int(ckpt["num_classes"]), input_size=int(input_size or ckpt["input_size"]),
                   mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]), module=module,
                   head=heads.pop() if len(heads) == 1 else None,
                   # a 3D-prior run's checkpoint keeps the head of the run it started from, untrained while its backbone
                   # moved: a probe reads it, not that head
                   classification=objective == "classification" and run_spec.task == "classification", device=device)


def rendered_samples(store: Store, dataset_id: str, split: str, members: tuple[str, ...] = ("json",),
                     limit: int | None = None) -> Iterator[dict]:
    """A rendered dataset's samples of one split, verified as they stream: ``{"rgb": (h, w, 3) uint8, "record":
    dict, <member>: bytes, ...}`` for the asked members (``json`` is parsed into ``record``)."""
    wanted = (*RGB_MEMBERS, "cls", *members)
    count = 0
    for shard in dataset_shards(store, dataset_id, split):
        for sample in iter_shard_samples(store, shard, wanted):
            rgb = find_rgb(sample)
            if rgb is None:
                continue
            out = {m: sample.get(m) for m in members}
            out["rgb"] = decode_rgb(sample[rgb])
            if sample.get("json") is not None:
                out["record"] = json.loads(sample["json"])
            out["cls"] = int(sample["cls"]) if sample.get("cls") is not None else None
            yield out
            count += 1
            if limit is not None and count >= limit:
                return


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """Same-sized (h, w, 3) uint8 arrays → (N, h, w, 3) uint8 tensor."""
    return torch.from_numpy(np.stack(images))
