"""The registry of shape families: each family is found by name, never by an if/elif chain.

A family turns its validated parameters, the dataset's root seed and a class
index into that class's items (meshes as GLB bytes, or an IFS definition as
JSON). Families register themselves with :func:`register_family` (defined in
:mod:`services.meshgen.family`); callers use :func:`get_family` and :func:`list_families`.
"""

from __future__ import annotations

from services.meshgen.family import (  # noqa: F401  (re-exported: the registry's public names)
    _FAMILIES, GeneratedItem, ProgressCallback, ShapeFamily, class_dir, register_family,
)


def _ensure_loaded() -> None:
    # importing the module registers the built-in families; done on first lookup, since they pull in trimesh
    from services.meshgen import families  # noqa: F401


def get_family(name: str) -> ShapeFamily:
    """The family registered as ``name``; ``ValueError`` lists the known names."""
    _ensure_loaded()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"family: unknown shape family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def list_families() -> list[str]:
    """Names of all registered families, sorted."""
    _ensure_loaded()
    return sorted(_FAMILIES)
