"""Small rendered-like datasets in the render stage's exact shard layout, for train tests.

Each class is a coloured shape (disc, square or triangle; hue set by the class) on a
noisy background, at a random position and size per view, so a tiny network can
learn the classes in a few hundred steps but cannot memorise a fixed image.
Every sample carries the contract's members: rgb.png, depth.png (16-bit millimetres), seg.png (uint16),
mask.png, json and cls.
"""

from __future__ import annotations

import colorsys
import io
import json

import numpy as np
from PIL import Image, ImageDraw

from services.common.manifest import Manifest, ManifestEntry, put_with_entry, write_manifest
from services.common.seeds import derive_rng
from services.common.store import Store
from services.render.codec import encode_depth
from services.render.keys import shard_index_key
from services.render.output import DeterministicTarWriter


def draw_sample(class_index: int, classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 image and (size, size) bool silhouette of one view of a class."""
    hue = class_index / classes
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 0.95))
    background = rng.integers(20, 90, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    mask = Image.new("L", (size, size), 0)
    radius = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    shape = class_index % 3
    for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask), 255)):
        if shape == 0:
            canvas.ellipse(box, fill=fill)
        elif shape == 1:
            canvas.rectangle(box, fill=fill)
        else:
            canvas.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return np.asarray(image), np.asarray(mask) > 0


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_members(class_index: int, instance: int, view: int, classes: int, size: int, seed: int) -> dict[str, bytes]:
    rng = derive_rng(seed, "synthetic", class_index, instance, view)
    rgb, mask = draw_sample(class_index, classes, size, rng)
    depth = np.where(mask, 2.0 + 0.1 * rng.random((size, size)), np.inf).astype(np.float32)
    seg = (mask.astype(np.uint16) * (class_index + 1)).astype(np.uint16)
    record = {"class_index": class_index, "instance": instance, "view": view, "seed": seed}
    return {
        "rgb.png": _png(rgb),
        "depth.png": encode_depth(depth),
        "seg.png": _png(seg),
        "mask.png": _png(mask.astype(np.uint8) * 255),
        "json": json.dumps(record).encode(),
        "cls": str(class_index).encode("ascii"),
    }


def write_dataset(
    store: Store,
    dataset_id: str,
    *,
    classes: int,
    views: dict[str, int],
    size: int = 32,
    samples_per_shard: int = 64,
    seed: int = 0,
    corrupt_keys: frozenset[str] = frozenset(),
    index: bool = True,
    members=None,
) -> Manifest:
    """Write ``views[split]`` views per class for each split, plus the manifest, as render does:
    shards in class order, written by render's tar writer with their sample index
    (``index=False`` leaves the index out, as for shards rendered before indexes existed).

    ``corrupt_keys`` samples get an undecodable rgb.png (the manifest still matches the
    shard, as when a renderer wrote bad data). ``members(class, instance, view, classes, size, seed)``
    replaces :func:`sample_members` as the maker of each sample's members.
    """
    members_of = members
    manifest = Manifest(kind="dataset", metadata={"family": "synthetic", "dataset": dataset_id.rsplit("-", 1)[0],
                                                  "classes": classes, "image_size": size, "splits": {}})
    for split_index, (split, per_class) in enumerate(views.items()):
        # Views of the val split start after the train views: held-out views of the same classes.
        first_view = sum(list(views.values())[:split_index])
        items = [(c, v) for c in range(classes) for v in range(first_view, first_view + per_class)]
        samples = []
        for c, v in items:  # class order, like render's plan
            key = f"{c:05d}_0_{v:05d}"
            members = (members_of or sample_members)(c, 0, v, classes, size, seed)
            if key in corrupt_keys:
                members["rgb.png"] = b"\x89PNG\r\n\x1a\n not really a png"
            samples.append((key, members))
        for shard, start in enumerate(range(0, len(samples), samples_per_shard)):
            chunk = samples[start:start + samples_per_shard]
            key = f"datasets/{dataset_id}/{split}-{shard:05d}.tar"
            buffer = io.BytesIO()
            writer = DeterministicTarWriter(buffer)
            for sample_key, members in chunk:
                writer.write(sample_key, members)
            writer.close()
            entry = put_with_entry(store, key, buffer.getvalue(), split=split, shard=shard, samples=len(chunk))
            if index:
                store.put_json(shard_index_key(key), writer.shard_index(key, entry.sha256))
            manifest.upsert(entry)
        manifest.metadata["splits"][split] = len(samples)
    write_manifest(store, f"datasets/{dataset_id}/manifest.json", manifest)
    return manifest


def entry(manifest: Manifest, key: str) -> ManifestEntry:
    found = manifest.entry(key)
    assert found is not None, key
    return found
