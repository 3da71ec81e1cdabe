"""What to render, per dataset family: each module turns a shard's sample range into samples.

- :mod:`.meshes` — procsynth, morphsynth (views of meshgen's meshes);
- :mod:`.fractals` — fractal2d (FractalDB instances of meshgen's IFS classes);
- :mod:`.noisescenes` — noisescenes (drawn by render alone).

A new family adds a module here whose writer is registered with
:func:`~services.render.kinds.registry.sample_writer`, and imports it below.
"""

from services.render.kinds import fractals, meshes, noisescenes  # noqa: F401  (registers the writers)
from services.render.kinds.registry import SAMPLE_WRITERS, DatasetContext, Sample, dataset_context, sample_writer

__all__ = ["SAMPLE_WRITERS", "DatasetContext", "Sample", "dataset_context", "sample_writer"]
