"""ImageNet-trained baselines: a run of kind ``torchvision_pretrained``.

Such a run trains nothing. It reads torchvision's published weights from a local file —
the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file name of the weights' URL>``,
where ``torchvision`` itself would keep a download) or the spec's ``weights_path`` — and
writes what a trained run writes: ``checkpoints/final.pt`` in the checkpoint contract
(:mod:`services.train.models`; mean, std and input size from the weights' own transforms),
``filters.png`` and ``done.json``. Transfer, the report's filter comparison and neural
scoring then treat it like any other run. Nothing is ever downloaded: a missing file is
an error naming the file expected.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from services.common.errors import ObjectNotFoundError, SpecError
from services.common.spec.train import PretrainSpec
from services.train.models import check_model_name, checkpoint_dict, save_checkpoint
from services.train.plots import filters_png

# Builders that change the architecture when given weights (auxiliary heads dropped, input
# transform on): their checkpoints would not rebuild from the contract's model name alone.
UNSUPPORTED = ("googlenet", "inception_v3")
_hub_lock = threading.Lock()


def weights_enum(run: PretrainSpec):
    """The torchvision weights enum member the run names, checked against its model."""
    model = check_model_name(run.model)
    if model in UNSUPPORTED:
        raise SpecError(f"pretrain '{run.name}': torchvision_pretrained does not support {model} "
                        f"(its builder changes the network when weights are given); supported: the other classification models")
    try:
        weights = torchvision.models.get_weight(run.weights)
    except (ValueError, KeyError, AttributeError) as exc:
        raise SpecError(f"pretrain '{run.name}': weights: no torchvision weights {run.weights!r} ({exc})") from None
    allowed = torchvision.models.get_model_weights(model)
    if type(weights) is not allowed:
        raise SpecError(f"pretrain '{run.name}': weights {run.weights} are not {model}'s; {model} takes "
                        f"{', '.join(f'{allowed.__name__}.{w.name}' for w in allowed)}")
    return weights


def weights_file(run: PretrainSpec, weights=None) -> Path:
    """Where the weights are read from: ``weights_path``, else the torch hub cache."""
    weights = weights or weights_enum(run)
    if run.weights_path:
        return Path(run.weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


@contextlib.contextmanager
def _hub_dir_with(file: Path, name: str):
    """A temporary torch hub directory whose cache holds ``file`` under torchvision's ``name``."""
    with _hub_lock, tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        (Path(tmp) / "checkpoints" / name).symlink_to(file.resolve())
        previous = torch.hub.get_dir()
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def load_pretrained(run: PretrainSpec) -> tuple[nn.Module, object]:
    """(torchvision model with the run's weights, the weights enum member); never downloads."""
    weights = weights_enum(run)
    file = weights_file(run, weights)
    if not file.is_file():
        where = "weights_path" if run.weights_path else "the torch hub cache ($TORCH_HOME/hub/checkpoints)"
        raise ObjectNotFoundError(
            f"pretrain '{run.name}': the {run.weights} weights file {file} does not exist ({where}); nothing is "
            f"downloaded: copy {os.path.basename(urlparse(weights.url).path)} there from {weights.url}")
    # The builder loads through torch.hub, which reads a cached file without downloading (and
    # applies model-specific key fixes, e.g. DenseNet's); a spec path is presented as the cache.
    name = os.path.basename(urlparse(weights.url).path)
    context = _hub_dir_with(file, name) if run.weights_path else contextlib.nullcontext()
    with context:
        try:
            model = torchvision.models.get_model(run.model, weights=weights)
        except (RuntimeError, KeyError, EOFError, OSError) as exc:
            raise SpecError(f"pretrain '{run.name}': {file} is not a {run.model} state dict for {run.weights}: {exc}") from None
    return model, weights


def import_pretrained(spec, run: PretrainSpec, run_id: str, store, prefix: str) -> dict:
    """Write the run's checkpoint, filters and done.json from the weights file; return the summary."""
    model, weights = load_pretrained(run)
    transforms = weights.transforms()
    input_size = int(transforms.crop_size[0])
    num_classes = len(weights.meta["categories"])
    ckpt = checkpoint_dict(model, name=run.model, num_classes=num_classes, input_size=input_size,
                           mean=tuple(transforms.mean), std=tuple(transforms.std), epoch=0,
                           spec=run.model_dump(mode="json") | {"run_id": run_id, "experiment": spec.name},
                           weights=run.weights, weights_file=str(weights_file(run, weights)))
    size, digest = save_checkpoint(store, f"{prefix}/checkpoints/final.pt", ckpt)
    store.put_bytes(f"{prefix}/filters.png", filters_png(model, f"{run_id}: first-layer filters ({run.weights})"))
    summary = {"run_id": run_id, "finished": True, "kind": run.kind, "model": run.model, "weights": run.weights,
               "num_classes": num_classes, "input_size": input_size, "epochs": 0, "final": {},
               "checkpoint": f"{prefix}/checkpoints/final.pt",
               "checkpoint_size": size, "checkpoint_sha256": digest}  # consumers verify final.pt against these
    store.put_json(f"{prefix}/done.json", summary)
    return summary
