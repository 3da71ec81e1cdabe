"""What a shape family is (:class:`ShapeFamily`, its :class:`GeneratedItem` s) and how one registers.

A family turns its validated parameters, the dataset's root seed and a class
index into that class's items (meshes as GLB bytes, or an IFS definition as
JSON). Families register themselves with :func:`register_family`; callers find them
through :mod:`services.meshgen.registry`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

_FAMILIES: dict[str, "ShapeFamily"] = {}


@dataclass
class GeneratedItem:
    """One stored output of a family.

    Attributes
    ----------
    class_index, instance : int
        Which item this is (fractal2d stores one item per class, instance 0).
    seed : int
        The seed the item was drawn from (recorded in the manifest).
    relative_key : str
        Key below ``meshes/<dataset_id>/``, e.g. ``"00003/1.glb"`` or ``"00003/ifs.json"``.
    data : bytes
        The object's bytes (deterministic for the same parameters and seed).
    stats : dict
        JSON-able statistics (vertices, faces, extents, rejections, ...).
    obj : Any
        The in-memory result (a ``trimesh.Trimesh`` or an ``IFSClass``), for library users.
    """

    class_index: int
    instance: int
    seed: int
    relative_key: str
    data: bytes
    stats: dict
    obj: Any = field(default=None, repr=False)


def class_dir(class_index: int) -> str:
    """Zero-padded class directory name (``3`` → ``"00003"``)."""
    return f"{class_index:05d}"


class ShapeFamily(abc.ABC):
    """A named way to make classes of shapes."""

    name: ClassVar[str]
    params_type: ClassVar[type[BaseModel]]

    def parse_params(self, params: BaseModel | dict | str) -> BaseModel:
        """Validated parameters from a model, a dict or JSON text (pydantic errors name the field)."""
        if isinstance(params, self.params_type):
            return params
        if isinstance(params, BaseModel):
            raise ValueError(f"family: expected {self.name} parameters, got {type(params).__name__}")
        if isinstance(params, str):
            return self.params_type.model_validate_json(params or "{}")
        return self.params_type.model_validate(params)

    @abc.abstractmethod
    def default_instances(self, params: BaseModel) -> int:
        """The family's natural number of items per class."""

    def stored_instances(self, params: BaseModel, instances: int) -> list[int]:
        """Instance numbers written to the store for a class with ``instances`` instances."""
        return list(range(instances))

    @abc.abstractmethod
    def generate_class(
        self, params: BaseModel, root_seed: int, class_index: int, instances: Sequence[int]
    ) -> list[GeneratedItem]:
        """The items ``instances`` of class ``class_index`` (shared work such as a base mesh is done once)."""

    def generate_item(self, params: BaseModel, root_seed: int, class_index: int, instance: int) -> GeneratedItem:
        """One item alone; byte-identical to the same item made inside :meth:`generate_class`."""
        return self.generate_class(params, root_seed, class_index, [instance])[0]


def register_family(cls: type[ShapeFamily]) -> type[ShapeFamily]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``; duplicates raise."""
    name = cls.name
    if name in _FAMILIES:
        raise ValueError(f"a shape family named {name!r} is already registered ({type(_FAMILIES[name]).__name__})")
    _FAMILIES[name] = cls()
    return cls


ProgressCallback = Callable[[str, int, int], None]
