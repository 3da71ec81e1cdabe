"""The ``flatland`` command line: a thin adapter over the library.

Exit codes: 0 success, 1 failure while working, 2 bad input (spec, arguments).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from services.common.errors import FlatlandError, SpecError
from services.common.stages import get_stage, list_stages

console = Console(stderr=True)
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def _load(spec_path: str):
    from services.common.spec import load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


def _open_store(spec, store_url: str | None):
    from services.common.store import open_store

    url = store_url or os.environ.get("FLATLAND_STORE") or (spec.store.url if spec is not None else None)
    try:
        return open_store(url)
    except (ValueError, OSError, FlatlandError) as exc:
        _fail(f"cannot open store {url!r}: {exc}", EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="beyond-flatland", prog_name="flatland")
def main(verbose: int) -> None:
    """Beyond Flatland: synthetic 3D pre-training data, networks, and neural scores.

    Start with:  flatland run experiments/quickstart.yaml
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("spec_path", metavar="SPEC.yaml")
def validate(spec_path: str) -> None:
    """Check an experiment spec; name every bad field."""
    from services.common.spec import content_hash

    spec = _load(spec_path)
    click.echo(f"{spec_path}: valid experiment '{spec.name}' (hash {content_hash(spec)})")
    for d in spec.datasets:
        click.echo(f"  dataset  {d.name:<24} {d.kind:<12} {d.classes} classes -> {spec.dataset_id(d.name)}")
    for r in spec.pretrain:
        source = f"on {'+'.join(r.datasets)}" if r.kind == "synthetic" else f"weights {r.weights}"
        click.echo(f"  pretrain {r.name:<24} {r.model:<12} {source} -> {spec.run_id(r.name)}")
    for t in spec.transfer:
        click.echo(f"  transfer {t.name:<24} {','.join(t.modes)} on {','.join(t.targets)}")
    for s in spec.scoring:
        click.echo(f"  scoring  {s.name:<24} {','.join(s.runs)} vs {','.join(s.benchmarks)}")


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to a file instead of stdout.")
def schema(output: str | None) -> None:
    """Print the JSON Schema of experiment specs (for editors)."""
    from services.common.spec import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output:
        Path(output).write_text(text + "\n")
        console.print(f"wrote {output}")
    else:
        click.echo(text)


@main.command()
def stages() -> None:
    """List the pipeline stages."""
    for name in list_stages():
        click.echo(f"{name:<8} {get_stage(name).description}")


@main.command()
@click.argument("stage", type=click.Choice([*list_stages(), "all"]))
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--port", default=50051, show_default=True, type=click.IntRange(0, 65535), help="gRPC port (0: pick a free one).")
@click.option("--metrics-port", default=9090, show_default=True, type=click.IntRange(0, 65535), help="Prometheus /metrics port.")
@click.option("--store", "store_url", default=None, help="Store URL (default: $FLATLAND_STORE or ./flatland-data).")
@click.option("--max-message-mb", default=64, show_default=True, type=click.IntRange(1, 2047), help="Largest gRPC message.")
@click.option("--grace", default=10.0, show_default=True, type=float, help="Seconds in-flight calls get on SIGTERM.")
@click.option(
    "--workers", type=click.IntRange(1, 1024), default=None,
    help="Worker processes each GenerateDataset, RenderDataset and Score call splits its items over "
    "(default: every core; 1: in the server's process). Same bytes whatever the count.",
)
@click.option("--max-work-calls", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Computing unary calls at once (GenerateMesh, RenderImages, StartRun, CompareModels); one more "
              "is refused with RESOURCE_EXHAUSTED.")
@click.option("--max-streams", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Streaming calls at once (GenerateDataset, RenderDataset, Score, WatchRun, Health/Watch).")
@click.option("--max-spec-calls", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="Spec/Validate and Spec/Schema calls at once.")
def serve(stage: str, host: str, port: int, metrics_port: int, store_url: str | None, max_message_mb: int, grace: float,
          workers: int | None, max_work_calls: int, max_streams: int, max_spec_calls: int) -> None:
    """Start a stage's gRPC server (health, reflection, metrics)."""
    from services.common.server import start_server
    from services.common.spec.local import available_cores

    store = _open_store(None, store_url)
    try:
        running = start_server(
            stage, store, host=host, port=port, metrics_port=metrics_port, max_message_bytes=max_message_mb * 1024 * 1024,
            max_workers=max_work_calls, max_streams=max_streams, max_spec_calls=max_spec_calls,
            workers=workers or available_cores(),
        )
    except OSError as exc:
        _fail(str(exc))
    running.stop_on_signals(grace)
    console.print(
        f"serving [bold]{', '.join(running.services)}[/] on {host}:{running.port}, "
        f"metrics on {host}:{running.metrics_port}/metrics, store {store.url}, "
        f"{workers or available_cores()} workers per dataset call"
    )
    # Machine-readable line for scripts and tests that start servers on port 0.
    print(json.dumps({"port": running.port, "metrics_port": running.metrics_port}), flush=True)
    running.wait()
    console.print("stopped")
    # Handlers were cancelled at the end of the grace period; one still inside a long
    # computation between cancellation checks must not hold the process past it (every
    # store write is atomic, so leaving now loses nothing a restart does not redo).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _job_index(index: int | None, count: int | None) -> tuple[int, int]:
    """The share of work: explicit options, else Kubernetes Indexed Job env vars, else all."""
    if index is None:
        index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    if count is None:
        count = int(os.environ.get("JOB_COMPLETION_COUNT", "1"))
    if count < 1 or not 0 <= index < count:
        _fail(f"job index {index} is not in 0..{count - 1} (JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT)", EXIT_BAD_INPUT)
    return index, count


@main.command()
@click.argument("stage", type=click.Choice(list_stages()))
@click.option("--spec", "spec_path", required=True, help="Experiment spec (YAML).")
@click.option("--index", type=int, default=None, help="Work share index (default: $JOB_COMPLETION_INDEX or 0).")
@click.option("--count", type=int, default=None, help="Number of shares (default: $JOB_COMPLETION_COUNT or 1).")
@click.option("--store", "store_url", default=None, help="Store URL (default: $FLATLAND_STORE, then the spec's).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, help="Serve job metrics here when no Pushgateway ($FLATLAND_PUSHGATEWAY) is set.")
@click.option("--part", type=click.Choice(["all", "pretrain", "transfer"]), default=None,
              help="train only: pre-training runs only (run i -> index i % count), or transfers only.")
def job(stage: str, spec_path: str, index: int | None, count: int | None, store_url: str | None, metrics_port: int | None,
        part: str | None) -> None:
    """Run one stage's batch work (a Kubernetes Job's entry point)."""
    from services.experiment.runner import run_stage_with_progress

    if part is not None and stage != "train":
        _fail(f"--part applies to the train stage only, not {stage}", EXIT_BAD_INPUT)
    spec = _load(spec_path)
    store = _open_store(spec, store_url)
    index, count = _job_index(index, count)
    options = {"part": part} if part is not None else {}
    try:
        summary = run_stage_with_progress(
            stage, spec, store, index=index, count=count, console=console, metrics_port=metrics_port, **options
        )
    except SpecError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except FlatlandError as exc:
        _fail(f"{stage}: {exc}")
    print(json.dumps({"stage": stage, "index": index, "count": count, "summary": summary}, default=str))


@main.command()
@click.argument("stage", type=click.Choice(list_stages()))
@click.option("--spec", "spec_path", required=True, help="Experiment spec (YAML).")
@click.option("--store", "store_url", default=None)
@click.option("--timeout", default=86_400.0, show_default=True, help="Give up after this many seconds (exit 1).")
@click.option("--poll", default=10.0, show_default=True, help="Seconds between checks.")
def wait(stage: str, spec_path: str, store_url: str | None, timeout: float, poll: float) -> None:
    """Block until the store shows STAGE's inputs complete."""
    from services.experiment.readiness import wait_for_inputs

    spec = _load(spec_path)
    store = _open_store(spec, store_url)
    try:
        wait_for_inputs(stage, spec, store, timeout=timeout, poll=poll, report=console.print)
    except TimeoutError as exc:
        _fail(str(exc))


@main.command()
@click.argument("spec_path", metavar="SPEC.yaml")
@click.option("--store", "store_url", default=None, help="Store URL (default: $FLATLAND_STORE, then the spec's).")
@click.option("--stage", "only", multiple=True, type=click.Choice(list_stages()), help="Run only these stages (repeatable).")
@click.option(
    "--remote", default=None, metavar="HOST:PORT",
    help="Drive the stages through gRPC servers sharing the store: HOST:PORT (flatland serve all) "
    "or meshgen=H:P,render=H:P,train=H:P,neuro=H:P.",
)
@click.option(
    "--workers", type=click.IntRange(1, 1024), default=None,
    help="Worker processes for meshgen, render and neuro (default: the spec's local.workers, else every core).",
)
def run(spec_path: str, store_url: str | None, only: tuple[str, ...], remote: str | None, workers: int | None) -> None:
    """Run an experiment end to end, then write its report."""
    from services.experiment.runner import run_experiment

    spec = _load(spec_path)
    store = _open_store(spec, store_url)
    if remote is not None:
        from services.experiment.remote import parse_addresses

        try:
            parse_addresses(remote)
        except ValueError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
    try:
        run_experiment(
            spec, store, stages=list(only) or None, console=console, remote=remote, spec_text=Path(spec_path).read_text(),
            workers=workers,
        )
    except KeyboardInterrupt:
        # Every worker has been stopped; finished shards and classes are counted, the rest is redone next time.
        console.print("[yellow]stopped[/]: run the same command again to resume")
        sys.exit(130)
    except SpecError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except FlatlandError as exc:
        _fail(str(exc))


@main.command()
@click.argument("target", metavar="TARGET", type=click.Path(exists=True))
@click.option("--params", "params_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="FitParams as a JSON or YAML file (services/common/spec/meshgen.py).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override one FitParams field (VALUE read as JSON when it parses), e.g. --set iterations=500.")
@click.option("--store", "store_url", default=None, help="Store URL for fits/<fit_id>/ (default: $FLATLAND_STORE, then ./flatland-data).")
def fit(target: str, params_path: str | None, overrides: tuple[str, ...], store_url: str | None) -> None:
    """Fit an ico-sphere to TARGET by differentiable rendering and store the mesh, loss curves and metrics.

    TARGET is a mesh file (.glb, .obj, .ply, .stl, .off: its silhouettes from 20 views are fitted, or its
    surface with --set target_mode=mesh), or a folder of mask PNGs with their render records (records.json,
    or <name>.json beside each <name>.png / <name>.mask.png, as an unpacked render shard holds them).
    """
    import yaml
    from rich.progress import Progress

    params: dict = {}
    if params_path:
        try:
            params = yaml.safe_load(Path(params_path).read_text()) or {}
        except yaml.YAMLError as exc:
            _fail(f"{params_path}: not JSON/YAML: {exc}", EXIT_BAD_INPUT)
        if not isinstance(params, dict):
            _fail(f"{params_path}: must hold a mapping of FitParams fields", EXIT_BAD_INPUT)
    params.update(_parse_overrides(overrides))
    store = _open_store(None, store_url)
    path = Path(target)
    kwargs = {"masks_folder": str(path)} if path.is_dir() else {"mesh": path.read_bytes(),
                                                                  "mesh_format": path.suffix.lstrip(".") or "glb"}
    job = get_stage("meshgen").job()
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("fitting", total=None)

            def progress(message: str, done: int, total: int) -> None:
                bar.update(task, description=message, completed=done, total=total)

            summary = job.run_fit(params, store, progress=progress, **kwargs)
    except (SpecError, ValueError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except FlatlandError as exc:
        _fail(str(exc))
    metrics = summary["metrics"]
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("held_out_iou", "train_iou", "chamfer", "fscore") if k in metrics)
    console.print(f"[bold green]fit {summary['fit_id']}:[/] {shown} in {summary['timing']['fit_seconds']:.1f} s")
    for key in summary["outputs"]:
        click.echo(key)


def _parse_overrides(overrides) -> dict:
    """``--set FIELD=VALUE`` options as a dict (VALUE read as JSON where it is JSON, else a string)."""
    params: dict = {}
    for item in overrides:
        field, sep, value = item.partition("=")
        if not sep or not field:
            _fail(f"--set {item!r}: expected FIELD=VALUE", EXIT_BAD_INPUT)
        try:
            params[field] = json.loads(value)
        except ValueError:
            params[field] = value
    return params


@main.command("fit-dataset")
@click.argument("spec_path", metavar="SPEC.yaml")
@click.argument("dataset")
@click.option("--classes", type=click.IntRange(min=1), default=3, show_default=True, help="Fit the first N classes.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override one FitParams field.")
@click.option("--store", "store_url", default=None, help="Store URL (default: $FLATLAND_STORE, then the spec's).")
def fit_dataset(spec_path: str, dataset: str, classes: int, overrides: tuple[str, ...], store_url: str | None) -> None:
    """Shape recoverability: fit the first classes of a rendered dataset from its masks; compare with the true meshes."""
    spec = _load(spec_path)
    store = _open_store(spec, store_url)
    params: dict = {}
    params.update(_parse_overrides(overrides))
    try:
        summary = get_stage("meshgen").job().fit_dataset(spec, store, dataset, params, classes=classes)
    except (SpecError, ValueError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except FlatlandError as exc:
        _fail(str(exc))
    for cls, m in summary["classes"].items():
        click.echo(f"class {cls}: held-out IoU {m['held_out_iou']}, chamfer {m['chamfer']:.4g}, F-score {m['fscore']:.3f}")
    click.echo(f"fits/{summary['dataset_id']}/recoverability.json")


@main.command()
@click.argument("spec_path", metavar="SPEC.yaml")
@click.option("--store", "store_url", default=None, help="Store URL (default: $FLATLAND_STORE, then the spec's).")
def report(spec_path: str, store_url: str | None) -> None:
    """Write the experiment's report from what the store holds (the last step of a cluster run)."""
    from services.report import write_report

    spec = _load(spec_path)
    store = _open_store(spec, store_url)
    try:
        path = write_report(spec, store)
    except FlatlandError as exc:
        _fail(str(exc))
    console.print(f"[bold green]report:[/] {path}")


@main.command()
@click.argument("spec_path", metavar="SPEC.yaml")
@click.option("--train-images-per-s", type=float, default=None, help="GPU training throughput to assume (default: benchmarks/measured.json).")
def plan(spec_path: str, train_images_per_s: float | None) -> None:
    """Estimate an experiment's cost: images, shards, store size, render core-hours, training GPU-hours."""
    from rich.table import Table

    from services.experiment.costplan import plan_experiment

    spec = _load(spec_path)
    p = plan_experiment(spec, train_images_per_s=train_images_per_s)
    out = Console()

    def hours(h):
        return "unmeasured" if h is None else f"{h:,.1f}"

    def size(b):
        return "unmeasured" if b is None else f"{b / 1e9:,.2f} GB" if b >= 1e9 else f"{b / 1e6:,.1f} MB"

    table = Table(title=f"{spec.name}: datasets")
    for col in ("dataset", "family", "images", "train", "shards", "render core-h", "store"):
        table.add_column(col, justify="right" if col not in ("dataset", "family") else "left")
    for d in p["datasets"]:
        table.add_row(d.name, d.family, f"{d.images:,}", f"{d.train_images:,}", f"{d.shards:,}", hours(d.render_core_hours),
                      size(d.store_bytes))
    out.print(table)
    table = Table(title=f"{spec.name}: pre-training")
    for col in ("run", "model", "images seen", "of which search", "GPU-h"):
        table.add_column(col)
    for r in p["runs"]:
        table.add_row(r.name, r.model, f"{r.images_seen:,}", f"{r.search_images:,}", hours(r.gpu_hours))
    out.print(table)
    out.print(
        f"total images {p['total_images']:,}, store {size(p['store_bytes'])}; render {hours(p['render_core_hours'])} core-hours; "
        f"training {hours(p['train_gpu_hours'])} GPU-hours (throughput measured on: {p['measured_on']})"
    )


@main.group()
def k8s() -> None:
    """Kubernetes: manifests for running an experiment as Jobs."""


@k8s.command("manifests")
@click.argument("spec_path", metavar="SPEC.yaml")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@click.option("--engine", type=click.Choice(["jobs", "argo"]), default=None,
              help="Plain Jobs released stage by stage, or one Argo Workflow (default: the spec's cluster.engine).")
@click.option("--image-digests", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML/JSON file of image name -> sha256:<digest> (e.g. render-gpu: sha256:...); pins every image by digest.")
def k8s_manifests(spec_path: str, output: str | None, engine: str | None, image_digests: str | None) -> None:
    """Print the manifests that run one experiment (kubectl apply -f -, or argo submit for --engine argo)."""
    try:
        from services.cluster.engines import cluster_manifests
        from services.cluster.manifests import load_image_digests, to_yaml
    except ModuleNotFoundError as exc:
        _fail(f"the cluster manifests generator is not available: {exc}")
    spec = _load(spec_path)
    try:
        digests = load_image_digests(Path(image_digests).read_text()) if image_digests else None
        objects = cluster_manifests(spec, Path(spec_path).read_text(), engine=engine, image_digests=digests)
    except ModuleNotFoundError as exc:
        _fail(f"the {engine or spec.cluster.engine} engine is not available: {exc}")
    except ValueError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    text = to_yaml(objects)
    if output:
        Path(output).write_text(text)
        console.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@k8s.command("release")
@click.argument("stage", type=click.Choice(list_stages()))
@click.option("--spec", "spec_path", required=True, help="Experiment spec (YAML).")
@click.option("--job", "job_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The stage's Job manifest (YAML) to create once its inputs are complete.")
@click.option("--store", "store_url", default=None)
@click.option("--timeout", default=604_800.0, show_default=True, help="Give up after this many seconds (exit 1).")
@click.option("--poll", default=30.0, show_default=True, help="Seconds between checks of the store.")
def k8s_release(stage: str, spec_path: str, job_path: str, store_url: str | None, timeout: float, poll: float) -> None:
    """Wait until STAGE's inputs are complete, then create its Job (the jobs engine's release step)."""
    from services.cluster.release import create_objects, read_objects
    from services.experiment.readiness import wait_for_inputs

    spec = _load(spec_path)
    store = _open_store(spec, store_url)
    try:
        objects = read_objects(Path(job_path).read_text())
    except ValueError as exc:
        _fail(f"{job_path}: {exc}", EXIT_BAD_INPUT)
    try:
        wait_for_inputs(stage, spec, store, timeout=timeout, poll=poll, report=console.print)
    except TimeoutError as exc:
        _fail(str(exc))
    for line in create_objects(objects):
        console.print(line)


if __name__ == "__main__":
    main()
