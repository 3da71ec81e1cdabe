"""Seeds: every random choice flows from one root seed through numpy's SeedSequence.

A path such as ``("quickstart", "procsynth-a", 12, 3, 7)`` (experiment, dataset,
class, instance, view) names one independent stream. Strings are hashed with
SHA-256 (stable across processes and platforms, unlike ``hash()``), so any item
can be regenerated alone, on any worker, without replaying the others.

No function here touches global random state, and there are no default
generators: callers always pass the root seed explicitly (seed 0 is a seed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SeedPart = int | str


def _part_to_int(part: SeedPart) -> int:
    if isinstance(part, bool):
        raise TypeError("seed path parts must be int or str, not bool")
    if isinstance(part, (int, np.integer)):
        if part < 0:
            raise ValueError(f"seed path parts must be non-negative, got {part}")
        return int(part)
    if isinstance(part, str):
        # 2**32-bounded words keep the spawn key compact; 8 bytes of SHA-256 avoid collisions.
        return int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "little")
    raise TypeError(f"seed path parts must be int or str, got {type(part).__name__}")


def seed_sequence(root_seed: int, *path: SeedPart) -> np.random.SeedSequence:
    """The SeedSequence for ``path`` under ``root_seed``.

    Parameters
    ----------
    root_seed : int
        The experiment's root seed (>= 0).
    *path : int or str
        Names of the nested item, outermost first, e.g. dataset, class, instance, view.
    """
    if isinstance(root_seed, bool) or not isinstance(root_seed, (int, np.integer)) or root_seed < 0:
        raise ValueError(f"root seed must be a non-negative integer, got {root_seed!r}")
    return np.random.SeedSequence(entropy=int(root_seed), spawn_key=tuple(_part_to_int(p) for p in path))


def derive_rng(root_seed: int, *path: SeedPart) -> np.random.Generator:
    """An independent ``numpy.random.Generator`` for ``path`` under ``root_seed``.

    Equal to ``rng_from_seed(derive_seed(root_seed, *path))``, so an output that
    records its item seed can be regenerated from that seed alone.
    """
    return rng_from_seed(derive_seed(root_seed, *path))


def derive_seed(root_seed: int, *path: SeedPart) -> int:
    """A 63-bit integer seed for ``path`` (to record beside an output, or to seed torch)."""
    return int(seed_sequence(root_seed, *path).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def rng_from_seed(seed: int) -> np.random.Generator:
    """The generator for a seed recorded by :func:`derive_seed` (re-render one item from its record)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))


def spawn_path(path: Sequence[SeedPart], *more: SeedPart) -> tuple[SeedPart, ...]:
    """``path`` extended by ``more``: a small helper for building nested paths."""
    return (*tuple(path), *more)
