"""Collect what an experiment left in the store and lay it out as one HTML page.

The page is self-contained (images inlined as data URIs) so it can be mailed, archived
or opened from an S3 console. The same content, minus the images, is written as JSON.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from services.common.spec import ExperimentSpec, content_hash, spec_to_yaml
from services.common.store import LocalStore, Store
from services.meshgen.api import recoverability_key
from services.render.api import contact_sheet_key, dataset_manifest_key
from services.train.api import evaluation_id, evaluation_key


def report_prefix(spec: ExperimentSpec) -> str:
    return f"reports/{spec.name}-{content_hash(spec)}"


def _png(store: Store, key: str) -> dict | None:
    if not key or not store.exists(key):
        return None
    data = base64.b64encode(store.get_bytes(key)).decode("ascii")
    return {"key": key, "src": f"data:image/png;base64,{data}"}


def _json(store: Store, key: str) -> Any:
    return store.get_json(key) if store.exists(key) else None


def _jsonl(store: Store, key: str) -> list[dict]:
    if not store.exists(key):
        return []
    return [json.loads(line) for line in store.get_bytes(key).decode().splitlines() if line.strip()]


def collect_report(spec: ExperimentSpec, store: Store, timings: dict[str, float] | None = None) -> dict:
    """Everything the report shows, read from the store (images as data URIs)."""
    prefix = report_prefix(spec)
    timing_key = f"{prefix}/timings.json"
    history = _json(store, timing_key) or {"runs": []}
    if timings:
        history["runs"].append(
            {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "stages_s": timings}
        )
        store.put_json(timing_key, history)

    datasets = []
    for d in spec.datasets:
        did = spec.dataset_id(d.name)
        manifest = _json(store, dataset_manifest_key(did))
        datasets.append(
            {
                "name": d.name,
                "id": did,
                "family": d.kind,
                "classes": d.classes,
                "ablation": (not d.render.pose_variation or not d.render.illumination_variation) if d.kind != "fractal2d" else False,
                "splits": (manifest or {}).get("metadata", {}).get("splits", {}),
                "contact_sheet": _png(store, contact_sheet_key(did)),
            }
        )

    runs = []
    for r in spec.pretrain:
        rid = spec.run_id(r.name)
        metrics = _jsonl(store, f"runs/{rid}/metrics.jsonl")
        runs.append(
            {
                "name": r.name,
                "id": rid,
                "model": r.model,
                "datasets": r.datasets if r.kind == "synthetic" else [f"ImageNet ({r.weights})"],
                "done": store.exists(f"runs/{rid}/done.json"),
                "final": metrics[-1] if metrics else None,
                "curves": _png(store, f"runs/{rid}/curves.png"),
                "filters": _png(store, f"runs/{rid}/filters.png"),
                "task": r.task,
            }
        )
    segmentation = _segmentation_section(spec, store, runs)

    transfer = _transfer_table(spec, store)
    scores, comparisons = _score_tables(spec, store)
    shape_bias, depth_probe = _evaluations(spec, store)
    recoverability = _recoverability(spec, store)

    return {
        "experiment": spec.name,
        "description": spec.description,
        "spec_hash": content_hash(spec),
        "spec_yaml": spec_to_yaml(spec),
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "store": store.url,
        "datasets": datasets,
        "runs": runs,
        "transfer": transfer,
        "segmentation": segmentation,
        "scores": scores,
        "comparisons": comparisons,
        "shape_bias": shape_bias,
        "depth_probe": depth_probe,
        "recoverability": recoverability,
        "timings": history["runs"],
    }


def _transfer_table(spec: ExperimentSpec, store: Store) -> list[dict]:
    """Per transfer entry: rows (target, mode) × columns (start points, from scratch last)."""
    tables = []
    for key in store.list("runs/"):
        if not key.endswith("/transfer.json"):
            continue
        results = (store.get_json(key) or {}).get("results", [])
        sources = list(dict.fromkeys(r["source"] for r in results if r["source"] != "scratch")) + ["scratch"]
        rows = {}
        for r in results:
            rows.setdefault((r["target"], r["mode"]), {})[r["source"]] = r.get("test_score", r.get("test_top1"))
        tables.append(
            {
                "key": key,
                "sources": sources,
                "rows": [
                    {
                        "target": target, "mode": mode,
                        "top1": [cells.get(src) for src in sources],
                        "delta": [
                            None if cells.get(src) is None or cells.get("scratch") is None else cells[src] - cells["scratch"]
                            for src in sources
                        ],
                    }
                    for (target, mode), cells in rows.items()
                ],
            }
        )
    return tables


#: Segmentation metrics as the report names them, micro and macro side by side.
SEGMENTATION_METRICS = (("pixel_accuracy", "pixel_accuracy_macro", "pixel accuracy"), ("iou_micro", "iou_macro", "IoU"),
                        ("f1_micro", "f1_macro", "F1"))


def _metric_rows(record: dict, prefix: str) -> list[dict]:
    """Rows (metric, micro, its interval, macro, its interval) of ``record``'s ``<prefix><metric>`` entries."""
    rows = []
    for micro, macro, name in SEGMENTATION_METRICS:
        rows.append({"metric": name, "micro": record.get(f"{prefix}{micro}"), "micro_ci": record.get(f"{prefix}{micro}_ci"),
                     "macro": record.get(f"{prefix}{macro}"), "macro_ci": record.get(f"{prefix}{macro}_ci")})
    return rows


def _segmentation_section(spec: ExperimentSpec, store: Store, runs: list[dict]) -> dict:
    """Segmentation pre-training (final metrics micro and macro with intervals, curves, example triplets) and
    segmentation transfer (each pre-trained source against the scratch baseline, with triplets)."""
    pretraining = []
    for run in runs:
        if run["task"] != "segmentation":
            continue
        final = run["final"] or {}
        pretraining.append({"name": run["name"], "id": run["id"], "model": run["model"], "done": run["done"],
                            "epochs": final.get("epoch", -1) + 1 if final else 0,
                            "val": _metric_rows(final, "val_"), "train": _metric_rows(final, "train_"),
                            "curves": run["curves"], "examples": _png(store, f"runs/{run['id']}/examples.png")})
    transfers = []
    for key in store.list("runs/"):
        if not key.endswith("/transfer.json"):
            continue
        results = [r for r in (store.get_json(key) or {}).get("results", []) if "test_segmentation" in r]
        if not results:
            continue
        scratch = {(r["target"], r["mode"]): r["test_segmentation"] for r in results if r["source"] == "scratch"}
        rows = []
        for r in sorted(results, key=lambda r: (r["target"], r["mode"], r["source"] == "scratch", r["source"])):
            m, base = r["test_segmentation"], scratch.get((r["target"], r["mode"]))
            rows.append({"target": r["target"], "mode": r["mode"], "source": r["source"],
                         "model": r.get("segmentation_model", r["model"]), "metrics": _metric_rows(m, ""),
                         "miou": m.get("iou_macro"), "miou_ci": m.get("iou_macro_ci"),
                         "delta": None if base is None or r["source"] == "scratch" else m["iou_macro"] - base["iou_macro"],
                         "images": m.get("images"), "examples": _png(store, r.get("examples", ""))})
        transfers.append({"key": key, "rows": rows})
    return {"pretraining": pretraining, "transfer": transfers}


def _score_tables(spec: ExperimentSpec, store: Store) -> tuple[list[dict], list[dict]]:
    """Neural predictivity per (benchmark, region): rows run × layer; model–model RSA figures."""
    scores, comparisons = [], []
    for r in spec.pretrain:
        rid = spec.run_id(r.name)
        for key in store.list(f"scores/{rid}/"):
            if not key.endswith(".json"):
                continue
            result = store.get_json(key)
            if "similarity" in result:  # model–model RSA
                comparisons.append(
                    {"title": f"{result.get('run_a')} vs {result.get('run_b')} on {result.get('benchmark')}",
                     "method": result.get("method"), "figure": _png(store, result.get("figure", ""))}
                )
                continue
            for region, layers in result.get("predictivity", {}).items():
                best = result.get("best_layer", {}).get(region)
                rsa = result.get("rsa", {}).get(region, {})
                scores.append(
                    {
                        "run": r.name, "benchmark": result.get("benchmark"), "region": region,
                        "synthetic": result.get("data", {}).get("synthetic", False),
                        "ceiling": result.get("ceiling", {}).get(region, {}).get("median"),
                        "normalisation": result.get("normalisation", ""),
                        "layers": [
                            {"layer": layer, "best": layer == best, "raw": v.get("raw"), "raw_ci": v.get("raw_ci"),
                             "r_over_ceiling": v.get("r_over_ceiling"), "split_std": v.get("split_std"),
                             "rsa": rsa.get(layer)}
                            for layer, v in layers.items()
                        ],
                        "figures": [img for f in result.get("figures", []) for img in [_png(store, f)] if img],
                    }
                )
    return scores, comparisons


def _evaluations(spec: ExperimentSpec, store: Store) -> tuple[list[dict], list[dict]]:
    """Per shape-bias entry: one bar per run (value, CI, counts); per depth-probe entry: a row per run."""
    shape_bias, depth_probe = [], []
    for entry in spec.evaluation.shape_bias:
        eid = evaluation_id(spec, entry)
        rows = []
        for run in entry.runs:
            result = _json(store, evaluation_key(eid, run))
            if result is None:
                rows.append({"run": run, "missing": True})
                continue
            ci = result.get("ci") or [None, None]
            rows.append({"run": run, "missing": False, "shape_bias": result.get("shape_bias"), "ci_low": ci[0],
                         "ci_high": ci[1], "images": result.get("images"), "shape": result.get("shape"),
                         "texture": result.get("texture"), "other": result.get("other"),
                         "classifier": result.get("classifier"), "confidence": result.get("confidence")})
        shape_bias.append({"name": entry.name, "id": eid, "kind": entry.kind,
                           "source": entry.conflict if entry.kind == "renders" else "standard cue-conflict set",
                           "rows": rows})
    for entry in spec.evaluation.depth_probe:
        eid = evaluation_id(spec, entry)
        rows = []
        for run in entry.runs:
            result = _json(store, evaluation_key(eid, run))
            rows.append({"run": run, "missing": result is None,
                         **{k: (result or {}).get(k) for k in ("rmse_m", "baseline_rmse_m", "rmse_image_mean_m",
                                                                "abs_rel", "layer", "test_images", "test_pixels")}})
        depth_probe.append({"name": entry.name, "id": eid, "kind": entry.kind,
                            "source": entry.dataset if entry.kind == "renders" else entry.path, "rows": rows})
    return shape_bias, depth_probe


def _recoverability(spec: ExperimentSpec, store: Store) -> list[dict]:
    """Per dataset with ``fits/<dataset_id>/recoverability.json`` (or listed in ``evaluation.recoverability``): the
    mean and per-class held-out silhouette IoU, chamfer and F-score of meshes fitted to its masks."""
    listed = set(spec.evaluation.recoverability.datasets) if spec.evaluation.recoverability is not None else set()
    rows = []
    for d in spec.datasets:
        did = spec.dataset_id(d.name)
        summary = _json(store, recoverability_key(did))
        if summary is None and d.name not in listed:
            continue
        if summary is None:
            rows.append({"name": d.name, "id": did, "family": d.kind, "missing": True})
            continue
        params = summary.get("params") or {}
        classes = [{"cls": int(c), **{k: v.get(k) for k in ("held_out_iou", "train_iou", "chamfer", "fscore",
                                                             "fit_seconds")}}
                   for c, v in sorted((summary.get("classes") or {}).items(), key=lambda kv: int(kv[0]))]
        rows.append({"name": d.name, "id": did, "family": d.kind, "missing": False,
                     "mean_held_out_iou": summary.get("mean_held_out_iou"), "mean_chamfer": summary.get("mean_chamfer"),
                     "mean_fscore": summary.get("mean_fscore"), "fscore_threshold": params.get("fscore_threshold"),
                     "iterations": params.get("iterations"), "level": params.get("level"), "classes": classes})
    return rows


def _strip_images(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "src" in obj and str(obj.get("src", "")).startswith("data:"):
            return {"key": obj["key"]}
        return {k: _strip_images(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_images(v) for v in obj]
    return obj


def render_html(report: dict) -> str:
    env = Environment(loader=PackageLoader("services.report", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    env.filters["fmt"] = lambda v: f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else v)
    env.filters["pct"] = lambda v: f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "–"
    return env.get_template("report.html.j2").render(r=report)


def write_report(spec: ExperimentSpec, store: Store, timings: dict[str, float] | None = None) -> str:
    """Write ``reports/<experiment>-<hash>/report.html`` and ``report.json``; return where it is.

    For a local store the return value is the file path a person can open.
    """
    report = collect_report(spec, store, timings)
    prefix = report_prefix(spec)
    store.put_bytes(f"{prefix}/report.html", render_html(report).encode("utf-8"))
    store.put_json(f"{prefix}/report.json", _strip_images(report))
    if isinstance(store, LocalStore):
        return str(Path(store.root, *prefix.split("/"), "report.html"))
    return f"{store.url.rstrip('/')}/{prefix}/report.html"
