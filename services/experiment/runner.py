"""Running an experiment's stages with visible progress: the core of ``flatland run`` and ``flatland job``."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from services.common.jobmetrics import JobMetrics
from services.common.spec import ExperimentSpec
from services.common.stages import get_stage, list_stages
from services.common.store import Store
from services.experiment.parallel import run_stage_parallel
from services.experiment.workplan import local_worker_count

ProgressFn = Callable[[str, int, int], None]


class RichProgress:
    """A ``progress(task, done, total)`` callback drawing one bar per task."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, task: str, done: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total or None)
        self.progress.update(self.tasks[task], completed=done, total=total or None)


def stage_available(name: str) -> bool:
    """Whether a stage's job module exists in this installation."""
    try:
        get_stage(name).job()
    except ModuleNotFoundError as exc:
        if exc.name and get_stage(name).job_module.startswith(exc.name):
            return False
        raise
    return True


def run_stage_with_progress(
    stage: str, spec: ExperimentSpec, store: Store, *, index: int = 0, count: int = 1, console: Console,
    metrics_port: int | None = None, workers: int = 1, **job_options,
) -> dict:
    """Run one stage's share of the work with a progress bar and job metrics.

    ``job_options`` go to the stage's ``run_job`` as they are (train: ``part``).
    With ``workers`` > 1 (only for the whole stage: ``index`` 0 of ``count`` 1) the work
    runs in that many local processes (:mod:`services.experiment.parallel`), capped by
    :func:`~services.experiment.workplan.local_worker_count`; one bar per task adds
    their progress up. Metrics go to the Pushgateway when ``FLATLAND_PUSHGATEWAY`` is
    set; otherwise they are served on ``metrics_port`` if one is given.
    """
    if workers > 1 and count != 1:
        raise ValueError(f"local workers split a whole stage; got workers={workers} with index {index} of {count}")
    job = get_stage(stage).job()
    metrics = JobMetrics(stage, spec.name, index)
    if not metrics.pushgateway and metrics_port is not None:
        metrics.serve(metrics_port)

    with RichProgress(console) as bar:
        def progress(task: str, done: int, total: int) -> None:
            bar(task, done, total)
            metrics.progress(task, done, total)

        processes = local_worker_count(stage, spec, workers) if workers > 1 and not job_options else 1
        if processes > 1:
            summary = run_stage_parallel(stage, spec, store.url, processes, progress=progress)
            heal_manifests(stage, spec, store)
        else:
            summary = job.run_job(spec, store, index=index, count=count, progress=progress, **job_options)
    # Done: final values pushed and scraped, a summary kept in the store, the Pushgateway groups deleted.
    metrics.finish(store)
    return summary


def heal_manifests(stage: str, spec: ExperimentSpec, store: Store) -> None:
    """After parallel workers: merge every finished item's part record into its dataset's manifest.

    Workers rewrite a manifest read-then-write, so one can drop another's entry; the
    part records (render) and class records (meshgen) survive and are merged here,
    leaving the manifest a single worker would have written.
    """
    if stage == "meshgen":
        from services.meshgen.api import MESH_FAMILIES, missing_classes

        for d in spec.datasets:
            if d.family.family in MESH_FAMILIES and d.meshes_from is None:
                missing_classes(spec, d.name, store)
    elif stage == "render":
        from services.render.api import consolidate_manifest

        for d in spec.datasets:
            consolidate_manifest(spec, store, d.name)


def run_experiment(
    spec: ExperimentSpec, store: Store, *, stages: list[str] | None = None, console: Console,
    remote: str | None = None, spec_text: str | None = None, workers: int | None = None,
) -> dict:
    """Run every stage of ``spec`` against ``store``, then write the report.

    In-process by default, meshgen, render and neuro each split over ``workers`` local
    processes (default: ``spec.local.workers``, else every available core); with ``remote`` (``HOST:PORT`` or ``stage=HOST:PORT,...``) the
    stages run on gRPC servers that share ``store``. Each stage skips what the store
    already holds, so a second run finishes in seconds. Returns summaries and timings.
    """
    wanted = stages or list_stages()
    workers = workers or spec.local.resolved_workers()
    console.print(f"[bold]experiment[/] {spec.name}  store {store.url}"
                  + (f"  remote {remote}" if remote else f"  workers {workers}"))
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    if remote is not None:
        from services.experiment.remote import parse_addresses, run_remote

        with RichProgress(console) as bar:
            timings = run_remote(spec, spec_text or "", parse_addresses(remote), stages=wanted, progress=bar)
    for name in ([] if remote is not None else list_stages()):
        if name not in wanted:
            continue
        if not stage_available(name):
            console.print(f"[yellow]stage {name}: not part of this installation yet, skipped[/]")
            continue
        console.rule(f"{name}: {get_stage(name).description}")
        started = time.perf_counter()
        results[name] = run_stage_with_progress(name, spec, store, console=console, workers=workers)
        timings[name] = time.perf_counter() - started
        console.print(f"{name} done in {timings[name]:.1f} s")
    outcome = {"stages": results, "timings_s": timings}
    try:
        report = importlib.import_module("services.report")
    except ModuleNotFoundError:
        report = None
    if report is not None and stages is None:
        path = report.write_report(spec, store, timings=timings)
        outcome["report"] = str(path)
        console.print(f"[bold green]report:[/] {path}")
    return outcome
