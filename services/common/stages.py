"""The registry of pipeline stages, in the order data flows through them.

Each stage names the modules of its two thin adapters: ``job`` (``run_job``) and
``servicer`` (``register``). Looking a stage up imports only that stage, so a
machine without a stage's heavy dependencies can still run the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    job_module: str
    servicer_module: str

    def job(self) -> ModuleType:
        return importlib.import_module(self.job_module)

    def servicer(self) -> ModuleType:
        return importlib.import_module(self.servicer_module)


_REGISTRY: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    if stage.name in _REGISTRY:
        raise ValueError(f"stage '{stage.name}' is already registered")
    _REGISTRY[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown stage '{name}'; stages are: {', '.join(_REGISTRY)}") from None


def list_stages() -> list[str]:
    return list(_REGISTRY)


for _name, _desc in [
    ("meshgen", "procedural meshes and fractal class definitions"),
    ("render", "images, depth, masks and records into dataset shards"),
    ("train", "pre-training, fine-tuning, linear probes"),
    ("neuro", "neural predictivity and RSA of trained networks"),
]:
    register_stage(Stage(_name, _desc, f"services.{_name}.job", f"services.{_name}.servicer"))
