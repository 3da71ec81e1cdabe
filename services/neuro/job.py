"""Batch entry point of the neuro stage: score every (run, benchmark) of every scoring entry.

Tasks are enumerated in spec order (scoring entry → run → benchmark, then model–model
comparisons of each pair of runs per benchmark); shard ``index`` of ``count`` takes
tasks ``index, index + count, …`` as a Kubernetes Indexed Job does. A task whose
score JSON exists with the same settings is skipped, so a rerun is quick.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from services.common.spec.experiment import ExperimentSpec
from services.common.store import Store
from services.neuro.scoring import compare_models, score_run


def _tasks(spec: ExperimentSpec) -> list[tuple]:
    tasks: list[tuple] = []
    for scoring in spec.scoring:
        for run in scoring.runs:
            for benchmark in scoring.benchmarks:
                tasks.append(("score", scoring, run, benchmark))
        if scoring.compare_models:
            for run_a, run_b in itertools.combinations(scoring.runs, 2):
                for benchmark in scoring.benchmarks:
                    tasks.append(("compare", scoring, (run_a, run_b), benchmark))
    return tasks


def run_job(
    spec: ExperimentSpec,
    store: Store,
    *,
    index: int = 0,
    count: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Do shard ``index`` of ``count`` of the experiment's scoring work; return a summary.

    Raises
    ------
    ObjectNotFoundError
        When a run to score has no ``runs/<run_id>/done.json`` (the message names the run).
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for count {count}")
    started = time.perf_counter()
    mine = _tasks(spec)[index::count]
    scored, skipped, outputs = 0, 0, []
    # One bar for the stage: scores and comparisons done of this share's tasks.
    for done, (kind, scoring, runs, benchmark) in enumerate(mine):
        if progress:
            progress("neuro", done, len(mine))
        if kind == "score":
            record = score_run(spec, store, scoring, runs, benchmark)
            outputs.append(f"scores/{record['run_id']}/{benchmark}.json")
        else:
            record = compare_models(spec, store, scoring, runs[0], runs[1], benchmark)
            outputs.append(record["figure"].removesuffix(".png") + ".json")
        if record.get("skipped"):
            skipped += 1
        else:
            scored += 1
    if progress:
        progress("neuro", len(mine), len(mine))
    return {"stage": "neuro", "shard": index, "count": count, "tasks": len(mine), "computed": scored,
            "skipped": skipped, "outputs": outputs, "seconds": round(time.perf_counter() - started, 3)}


def score_pairs_share(store: Store, spec: ExperimentSpec, scoring_name: str, pairs: list[tuple[str, str]], force: bool,
                      *, index: int, count: int, progress=None, emit=None) -> dict:
    """Worker target of ``flatland serve``'s ``Score`` (:class:`services.common.workers.WorkerPool`): the
    (run, benchmark) pairs ``index, index + count, …`` of one scoring entry; ``emit((position, record))`` per pair."""
    from services.neuro.scoring import scoring_spec

    scoring = scoring_spec(spec, scoring_name)
    mine = list(range(len(pairs)))[index::count]
    for position in mine:
        run, benchmark = pairs[position]
        task = f"neuro:{scoring.name}:{run}:{benchmark}"
        record = score_run(spec, store, scoring, run, benchmark, force=force,
                           progress=(lambda t, d, n, task=task: progress(task, d, n)) if progress else None)
        if emit is not None:
            emit((position, record))
    return {"scored": len(mine)}
