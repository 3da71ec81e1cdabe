"""The family registry: lookup by name, duplicates refused, unknown names listed."""

from __future__ import annotations

import pytest

from services.meshgen.registry import ShapeFamily, get_family, list_families, register_family


def test_builtin_families_are_registered():
    assert {"procsynth", "morphsynth", "fractal2d"} <= set(list_families())
    assert get_family("procsynth").name == "procsynth"


def test_duplicate_name_raises():
    get_family("procsynth")  # make sure the built-ins are loaded

    class Duplicate(ShapeFamily):
        name = "procsynth"
        params_type = dict

        def default_instances(self, params):
            return 1

        def generate_class(self, params, root_seed, class_index, instances):
            return []

    with pytest.raises(ValueError, match="already registered"):
        register_family(Duplicate)


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown shape family 'blobs'.*procsynth"):
        get_family("blobs")
