"""2D variants of a rendered view: a flip and a planar affine map in the image plane (FlatWorldDB).

The map comes from a record's ``planar`` block (:func:`services.render.sampling.planar_matrix`):
a (2, 3) matrix from canonical-render pixels to output pixels, in continuous coordinates
(pixel centres at +0.5, x right, y down). RGB is resampled bilinearly; depth by nearest
neighbour, so labels stay labels: the mask is again exactly ``isfinite(depth)`` and the
segmentation (derived from the mask) moves with it. What the warp uncovers is background.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def inverse_affine(matrix) -> tuple[float, ...]:
    """PIL's AFFINE data (output pixel -> input pixel) of a forward (2, 3) matrix."""
    forward = np.vstack([np.asarray(matrix, dtype=float), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    return tuple(float(x) for x in inverse[:2].ravel())


def warp_view(rgb: np.ndarray, depth: np.ndarray, matrix, background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp one view by a planar affine map.

    Parameters
    ----------
    rgb : (h, w, 3) uint8
        The canonical render, composited on its background.
    depth : (h, w) float32
        Its depth, ``inf`` off the object.
    matrix : (2, 3) array-like
        Forward map, canonical pixels -> output pixels.
    background : (h, w, 3) uint8
        What shows where the object is not (unwarped).

    Returns
    -------
    rgb : (h, w, 3) uint8
    depth : (h, w) float32
    mask : (h, w) bool
        ``isfinite(depth)``.
    """
    h, w = depth.shape
    data = inverse_affine(matrix)
    warped_depth = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32)).transform(
        (w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.NEAREST, fillcolor=float("inf"))
    depth = np.asarray(warped_depth, dtype=np.float32).copy()
    mask = np.isfinite(depth)
    warped_rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).transform(
        (w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR))
    rgb = np.where(mask[..., None], warped_rgb, background)
    return np.ascontiguousarray(rgb, dtype=np.uint8), depth, mask
