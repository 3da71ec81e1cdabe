"""How ``flatland run`` uses the machine it runs on (embedded mode, no cluster)."""

from __future__ import annotations

import os

from pydantic import Field

from services.common.spec.base import StrictModel


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, so containers and ``taskset`` count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LocalSpec(StrictModel):
    workers: int | None = Field(
        default=None, ge=1, le=1024,
        description="Worker processes per stage in `flatland run` (meshgen, render and neuro split their work as "
        "an Indexed Job would; train keeps one process and uses DDP under torchrun). Default: every available core. "
        "`flatland run --workers N` overrides it. Outputs are byte-identical whatever the count.",
    )

    def resolved_workers(self) -> int:
        return self.workers or available_cores()
