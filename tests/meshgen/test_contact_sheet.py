"""Contact-sheet helper: real offscreen rendering (OSMesa) and chaos-game drawing."""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image

from services.meshgen.contact_sheet import render_ifs, render_mesh, write_contact_sheet


def test_render_mesh_shows_the_object_centred():
    image = render_mesh(trimesh.creation.box(extents=(1.0, 2.0, 1.0)), size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 255).all()  # background
    assert image[24:40, 24:40].mean() < 250  # the box is in the middle


def test_render_ifs_and_sheet(tmp_path):
    sierpinski = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]])
    image = render_ifs(sierpinski, size=64, points=20000)
    dark = (image[:, :, 0] < 128).mean()
    assert 0.1 < dark < 0.6
    path = write_contact_sheet(tmp_path / "sheet.png", {"a": [[image, image]], "b": [[image]]})
    with Image.open(path) as png:
        assert png.size[0] > 100 and png.size[1] > 100
