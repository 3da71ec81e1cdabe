"""Contact sheets: one PNG grid per dataset (rows = classes, columns = views).

The images are drawn again from the same records the shards use (same seeds),
so a sheet shows exactly what the shards contain. Noise scenes have no class per
image: their sheet shows scenes (top row of each pair) over their label maps.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from services.common.seeds import derive_rng
from services.common.spec.experiment import ExperimentSpec
from services.common.spec.meshgen import MESH_KINDS
from services.common.store import Store
from services.render.keys import contact_sheet_key
from services.render.kinds import DatasetContext, dataset_context
from services.render.kinds.fractals import fractal_records
from services.render.kinds.meshes import load_instance_mesh, mesh_records
from services.render.plan import ShardTask, layout
from services.render.renderers.fractal import draw_fractal_records

MAX_ROWS = 8
MAX_COLUMNS = 8
THUMB = 128
NOISE_ROW_PAIRS = 2  # noise scenes: rows of scenes, each over its label maps


def _thumb(image: np.ndarray, size: int = THUMB) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def grid(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """(h, w, 3) uint8 grid of equally sized RGB tiles, white gaps between them."""
    tile = rows[0][0].shape[0]
    columns = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (tile + gap) + gap, columns * (tile + gap) + gap, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = gap + i * (tile + gap), gap + j * (tile + gap)
            sheet[y:y + tile, x:x + tile] = image
    return sheet


def _label_colours(labels: np.ndarray) -> np.ndarray:
    palette = (derive_rng(0, "contact-sheet-palette").random((int(labels.max()) + 1, 3)) * 200 + 55).astype(np.uint8)
    palette[0] = 0
    return palette[labels]


def sheet_rows(ctx: DatasetContext) -> list[list[np.ndarray]]:
    """Tiles of the dataset's contact sheet."""
    kind = ctx.dataset.kind
    lay = layout(ctx.dataset)
    classes = min(ctx.dataset.classes, MAX_ROWS)
    rows = []
    if kind in MESH_KINDS:
        from services.render.views import get_renderer

        settings = ctx.dataset.render
        renderer = get_renderer(settings.image_size, settings.backend)
        views = list(range(min(settings.views_per_instance, MAX_COLUMNS)))
        for cls in range(classes):
            try:
                mesh = load_instance_mesh(ctx, cls, 0)
            except ValueError:  # degenerate: leave the row grey
                rows.append([np.full((THUMB, THUMB, 3), 128, np.uint8)] * len(views))
                continue
            renderer.set_mesh(mesh, settings.material.model_dump(mode="json"), token=(ctx.dataset_id, cls, 0))
            rows.append([_thumb(renderer.render(r).rgb) for r in mesh_records(ctx, cls, 0, views, mesh)])
    elif kind == "fractal2d":
        per_class = lay.count("train") // lay.classes
        columns = min(per_class, MAX_COLUMNS)
        for cls in range(classes):
            # spread the columns over the class's train samples: variants and flips
            picks = np.linspace(0, per_class - 1, columns).round().astype(int) + cls * per_class
            records = [fractal_records(ctx, ShardTask(ctx.dataset.name, "train", 0, int(i), int(i) + 1))[0]
                       for i in picks]
            rows.append([_thumb(img) for img in draw_fractal_records(records)])
    else:
        from services.render.renderers.scenes import draw_scene, sample_scene

        total = ctx.dataset.family.scenes
        columns = min(total, MAX_COLUMNS)
        for first in range(0, min(total, NOISE_ROW_PAIRS * columns), columns):
            drawn = [draw_scene(sample_scene(ctx.dataset.family, ctx.dataset.classes, root_seed=ctx.root_seed,
                                             dataset_id=ctx.dataset_id, scene=s))
                     for s in range(first, min(first + columns, total))]
            rows.append([_thumb(rgb) for rgb, _ in drawn])
            rows.append([_thumb(_label_colours(labels)) for _, labels in drawn])
    return rows


def contact_sheet(spec: ExperimentSpec, store: Store, dataset_name: str) -> np.ndarray:
    """(h, w, 3) uint8 contact sheet of one dataset."""
    return grid(sheet_rows(dataset_context(spec, store, dataset_name)))


def write_contact_sheet(spec: ExperimentSpec, store: Store, dataset_name: str) -> str:
    """Make the dataset's contact sheet and store it at ``datasets/<id>/contact-sheet.png``; return the key."""
    buffer = io.BytesIO()
    Image.fromarray(contact_sheet(spec, store, dataset_name)).save(buffer, format="PNG")
    key = contact_sheet_key(spec.dataset_id(dataset_name))
    store.put_bytes(key, buffer.getvalue())
    return key
