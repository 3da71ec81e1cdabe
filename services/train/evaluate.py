"""Running an experiment's evaluations (``spec.evaluation``): each (evaluation, run) pair writes one JSON at
:func:`services.train.api.evaluation_key` and is skipped when it is already there."""

from __future__ import annotations

from collections.abc import Callable

from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.train.api import evaluation_id, evaluation_key
from services.train.depthprobe import evaluate_depth_probe
from services.train.shapebias import evaluate_shape_bias

Progress = Callable[[str, int, int], None]


def run_evaluations(spec: ExperimentSpec, store: Store, *, progress: Progress | None = None,
                    mine: Callable[[int], bool] = lambda i: True) -> dict:
    """Every (evaluation, run) pair of ``spec.evaluation`` not yet in the store; returns a summary.

    ``mine(i)`` picks this worker's share (entry ``i`` in shape_bias then depth_probe order).
    """
    summary: dict = {}
    entries = [(e, evaluate_shape_bias) for e in spec.evaluation.shape_bias] + \
              [(e, evaluate_depth_probe) for e in spec.evaluation.depth_probe]
    for i, (entry, evaluate) in enumerate(entries):
        if not mine(i):
            continue
        eid = evaluation_id(spec, entry)
        results = summary[entry.name] = {}
        for j, run in enumerate(entry.runs):
            key = evaluation_key(eid, run)
            if progress is not None:
                progress(f"evaluate {entry.name}", j, len(entry.runs))
            if store.exists(key):
                results[run] = {"status": "skipped", "key": key}
                continue
            result = evaluate(spec, entry, store, run)
            result.update(evaluation=entry.name, evaluation_id=eid, run=run, run_id=spec.run_id(run))
            store.put_json(key, result)
            results[run] = {"status": "done", "key": key}
        if progress is not None:
            progress(f"evaluate {entry.name}", len(entry.runs), len(entry.runs))
    return summary
