"""How a sample's images are stored: RGB in a chosen format, depth as 16-bit millimetres.

Import-light (numpy, Pillow and zlib-ng): other stages reach it through :mod:`services.render.api`.

Depth (``depth.png``): a 16-bit greyscale PNG of the distance along the camera's viewing
axis in millimetres, rounded to the nearest millimetre, so the stored value is within
0.5 mm (:data:`DEPTH_PRECISION_M`) of the rendered one (plus float32 rounding of the
decoded metres: under 4 µm below 65 m). 0 means no surface (background,
decoded as ``inf``); depths beyond 65.534 m are stored as 65534 (the far limit). World
units are metres. At 224 x 224 a depth map takes about 5-10 KB instead of the 200 KB of a
float32 ``.npy``.

RGB: ``png`` (lossless, ``rgb.png``, the default), ``webp`` (lossless WebP, ``rgb.webp``)
or ``jpeg`` (quality 95, 4:4:4 chroma, ``rgb.jpg``; lossy). All three are deterministic for
a given Pillow/libwebp/libjpeg build, and the training loader decodes each
(``torchvision.io.decode_image``). ``benchmarks/render.py`` reports what each costs in
bytes and decode time.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from zlib_ng import zlib_ng
from PIL import Image

#: Store the depth in these units (metres per step).
DEPTH_UNIT_M = 0.001
#: Largest error of a decoded depth inside the range: half a step.
DEPTH_PRECISION_M = DEPTH_UNIT_M / 2
#: Largest depth stored as itself; anything farther is stored as this.
DEPTH_MAX_M = 65534 * DEPTH_UNIT_M

RGB_FORMATS = {"png": "rgb.png", "webp": "rgb.webp", "jpeg": "rgb.jpg"}
#: Every name an RGB member of a sample may have.
RGB_MEMBERS = tuple(RGB_FORMATS.values())
#: Sample members besides the image and label map whose place in the tar a shard index records.
INDEXED_MEMBERS = ("depth.png", "json")
#: The outputs a dataset may store besides its records (``json`` and ``cls`` are always stored).
OUTPUTS = ("rgb", "depth", "seg", "mask")


#: PNG colour type by channel count (grey, RGB, RGBA).
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}
#: PNG row filter 2, "Up": each byte minus the byte above it (mod 256).
_PNG_UP = 2
#: zlib-ng deflate level of the PNG writer. Measured on 512 x 512 noise scenes (deflate alone): level 1 2.0 ms,
#: 223 KB; 2: 3.4 ms, 155 KB; 3: 4.3 ms, 139 KB; 6: 12.2 ms, 125 KB. Pillow's level 1 made 165 KB in 11 ms.
_PNG_LEVEL = 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib_ng.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a (h, w) or (h, w, 1|3|4) uint8 or uint16 image (lossless, deterministic).

    Written here rather than through Pillow for speed: every row takes the Up filter and the
    stream is deflated by zlib-ng (``zlib-ng``, level 2, :data:`_PNG_LEVEL`). A 512 x 512
    noise-scene texture then encodes in about 3.7 ms instead of Pillow's 11 ms (zlib level 1,
    adaptive filters), about 6% smaller. Any PNG decoder reads it (Pillow, torchvision,
    browsers). Not ISA-L (``isal``, 1.7 ms): its level-1 output for the same input differed
    between processes now and then, which broke byte-identical renders across worker counts.
    """
    array = np.ascontiguousarray(image)
    channels = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else 0)
    if array.dtype not in (np.uint8, np.uint16) or channels not in _PNG_COLOUR_TYPES or array.size == 0:
        raise ValueError(f"encode_png takes a non-empty (h, w) or (h, w, 1|3|4) uint8 or uint16 array, "
                         f"got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    if array.dtype == np.uint16:
        array = array.astype(">u2")  # PNG stores 16-bit samples big-endian
    rows = array.view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = _PNG_UP
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8 * array.itemsize, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join((b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib_ng.compress(filtered, _PNG_LEVEL)), _png_chunk(b"IEND", b"")))


def decode_png(data: bytes) -> np.ndarray:
    """The array of a PNG written by :func:`encode_png` (uint16 images come back as uint16)."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    return array.astype(np.uint16) if image.mode.startswith("I") else array


def rgb_member(fmt: str) -> str:
    """The tar member name of an RGB image in format ``fmt`` (``rgb.png``, ``rgb.webp``, ``rgb.jpg``)."""
    try:
        return RGB_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"rgb format must be one of {', '.join(RGB_FORMATS)}, got {fmt!r}") from None


def encode_rgb(image: np.ndarray, fmt: str = "png") -> tuple[str, bytes]:
    """``(member name, bytes)`` of a (h, w, 3) uint8 image in format ``fmt``."""
    name = rgb_member(fmt)
    if fmt == "png":
        return name, encode_png(image)
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "webp":
        # method 4: libwebp's default effort; quality 100 with lossless is its strongest compression
        pil.save(buffer, format="WEBP", lossless=True, quality=100, method=4, exact=True)
    else:
        pil.save(buffer, format="JPEG", quality=95, subsampling=0, optimize=False)
    return name, buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """(h, w, 3) uint8 of any RGB member (PNG, WebP or JPEG)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def find_rgb(files: dict) -> str | None:
    """The RGB member of a sample's ``{name: ...}`` (any format), or None."""
    return next((name for name in RGB_MEMBERS if name in files), None)


def encode_depth(depth: np.ndarray) -> bytes:
    """16-bit PNG of a (h, w) float depth map in metres (``inf``/``nan``: no surface); see the module doc."""
    depth = np.asarray(depth, dtype=np.float64)
    surface = np.isfinite(depth)
    if np.any(depth[surface] < 0):
        raise ValueError("depth must be >= 0 metres where there is a surface")
    steps = np.zeros(depth.shape, dtype=np.uint16)
    # a surface nearer than half a millimetre still counts as a surface: at least 1 step
    steps[surface] = np.clip(np.rint(depth[surface] / DEPTH_UNIT_M), 1, 65534).astype(np.uint16)
    return encode_png(steps)


def decode_depth(data: bytes) -> np.ndarray:
    """(h, w) float32 depth in metres from :func:`encode_depth`'s PNG; ``inf`` where there is no surface."""
    steps = decode_png(data)
    if steps.dtype != np.uint16 or steps.ndim != 2:
        raise ValueError(f"a depth map is a 16-bit greyscale PNG, got {steps.dtype} of shape {steps.shape}")
    depth = (steps * DEPTH_UNIT_M).astype(np.float32)  # float64 product, then one rounding to float32
    depth[steps == 0] = np.inf
    return depth
