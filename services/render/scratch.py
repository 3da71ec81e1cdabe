"""Render's scratch files in the temporary directory: shard tars built before upload.

A worker killed while building a shard leaves its ``flatland-shard-*.tar`` behind (up
to a shard of images each). The next run removes those that nobody has written to for
:data:`STALE_AFTER_S` seconds: a live writer touches its tar with every sample, and
uploads one within seconds of closing it, so only an abandoned tar gets that old.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger("flatland.render")

SCRATCH_PREFIX = "flatland-shard-"  # what services.render.output names its scratch tars
STALE_AFTER_S = 15 * 60


def clean_stale_scratch(directory: str | os.PathLike | None = None, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete scratch tars untouched for ``stale_after_s`` seconds; return what was deleted."""
    root = Path(directory or tempfile.gettempdir())
    cutoff = time.time() - stale_after_s
    removed = []
    try:
        candidates = list(root.glob(f"{SCRATCH_PREFIX}*.tar"))
    except OSError:
        return removed
    for path in candidates:
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_mtime > cutoff:
                continue
            size = path.stat().st_size
            path.unlink()
        except OSError:  # another worker cleaned it first, or it is not ours to delete
            continue
        log.info("removed stale render scratch %s (%d bytes, untouched for over %.0f s)", path, size, stale_after_s)
        removed.append(path)
    return removed
