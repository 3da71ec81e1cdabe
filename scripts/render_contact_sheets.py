"""Contact sheets of ProcSynthDB and its 3D-variation ablations for docs/ (5 classes x 6 views, 128 px).

    PYOPENGL_PLATFORM=osmesa python scripts/render_contact_sheets.py STORE_DIR [OUT_DIR=docs]

Writes render-procsynth.png (pose and illumination vary), render-flatworld.png (neither: 2D variants of
one canonical render), render-pose-only.png and render-illumination-only.png, all of the same meshes;
then render-morphsynth.png (one GP morph per class), render-fractal2d.png (FractalDB classes) and
render-noisescenes.png (the published noise-scene generator's three classes; Perlin and sparse-convolution
scenes alternate).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from services.common.spec.experiment import parse_spec
from services.common.store import LocalStore
from services.meshgen.job import run_job as meshgen
from services.render.contact import contact_sheet

RENDER = {"image_size": 128, "views_per_instance": 6, "shard_size": 100}
VARIANTS = {
    "procsynth": {},
    "flatworld": {"pose_variation": False, "illumination_variation": False, "planar_variation": {"enabled": True}},
    "pose-only": {"pose_variation": True, "illumination_variation": False},
    "illumination-only": {"pose_variation": False, "illumination_variation": True},
}


def spec():
    datasets = []
    for name, render in VARIANTS.items():
        dataset = {"name": name, "family": {"family": "procsynth"}, "classes": 5, "instances_per_class": 1,
                   "render": RENDER | render}
        if name != "procsynth":
            dataset["meshes_from"] = "procsynth"
        datasets.append(dataset)
    datasets.append({"name": "morphsynth", "family": {"family": "morphsynth"}, "classes": 5, "instances_per_class": 1,
                     "render": RENDER})
    datasets.append({"name": "fractal2d", "family": {"family": "fractal2d"}, "classes": 5,
                     "fractal_render": {"image_size": 128, "points": 20000, "shard_size": 100}})
    datasets.append({"name": "noisescenes", "family": {"family": "noisescenes", "image_size": 128, "scenes": 60, "noise": "both"},
                     "classes": 3})
    return parse_spec({"name": "contact-sheets", "seed": 0, "datasets": datasets})


def main(store_dir: str, out_dir: str = "docs") -> None:
    experiment, store = spec(), LocalStore(store_dir)
    meshgen(experiment, store)
    for name in [*VARIANTS, "morphsynth", "fractal2d", "noisescenes"]:
        path = Path(out_dir) / f"render-{name}.png"
        Image.fromarray(contact_sheet(experiment, store, name)).save(path, format="PNG", optimize=True)
        print(path)


if __name__ == "__main__":
    main(*sys.argv[1:])
