"""Fixtures: tiny experiments with hand-made meshes/IFS in meshgen's store layout."""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import pytest

from services.common.store import LocalStore

from .meshdata import primitive_meshes, tiny_spec, write_meshes


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def shapes(store):
    """(spec, store) with 2 classes x 2 instances of primitives in the store."""
    spec = tiny_spec()
    prims = primitive_meshes()
    write_meshes(store, spec, "shapes", {(c, i): prims[2 * c + i] for c in range(2) for i in range(2)})
    return spec, store
