"""A benchmark = neural data + mapping + comparison + ceiling; this module runs it.

:func:`score_checkpoint` scores one checkpoint's layers against one neural data set
(predictivity per region and layer, RSA per region and layer, both ceilings).
:func:`score_run` adds the store conventions: it reads ``runs/<run_id>/checkpoints/final.pt``
of a finished run and writes ``scores/<run_id>/<benchmark>.json`` plus PNGs.
:func:`compare_models` is model–model RSA, layer by layer, between two runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.common.errors import InvalidKeyError, ObjectNotFoundError
from services.common.spec.experiment import ExperimentSpec, content_hash
from services.common.spec.neuro import NeuralDataSpec, ScoringSpec, check_layers
from services.common.store import Store
from services.neuro.dataformat import NeuralData, read_neural_data
from services.neuro.features import (
    MAX_FEATURE_BYTES,
    Checkpoint,
    cached_features,
    cached_spatial_features,
    checkpoint_from_bytes,
    image_folder_digest,
    load_image_folder,
)
from services.neuro.planted import ensure_planted
from services.neuro.plots import model_model_figure, predictivity_figure, rdm_figure
from services.train.api import verified_final_checkpoint
from services.neuro.predictivity import (
    NORMALISATION,
    Split,
    brainscore_internal_consistency,
    make_splits,
    read_split_file,
    reduce_pca,
    reliability_ceiling,
    score_predictivity,
)
from services.neuro.rsa import compare_rdms, rdm, rsa_noise_ceiling

ProgressFn = Callable[[str, int, int], None]
log = logging.getLogger(__name__)


def checkpoint_key(run_id: str) -> str:
    return f"runs/{run_id}/checkpoints/final.pt"


def score_key(run_id: str, benchmark: str) -> str:
    return f"scores/{run_id}/{benchmark}.json"


def comparison_key(run_id_a: str, run_id_b: str, benchmark: str) -> str:
    return f"scores/{run_id_a}/{benchmark}-vs-{run_id_b}.json"


def scoring_hash(scoring: ScoringSpec, neural: NeuralDataSpec, store: Store | None = None) -> str:
    """What a score depends on besides the checkpoint: scoring settings (minus run/benchmark lists) and the data spec.

    With a split file and a ``store``, the file's content too (an edited file must not be skipped as done).
    """
    settings = scoring.model_dump(mode="json", exclude={"name", "runs", "benchmarks", "compare_models", "device", "batch_size"})
    if scoring.split_file and store is not None:
        raw, _ = _local_or_store_bytes(store, scoring.split_file, f"scoring '{scoring.name}' split_file")
        settings["split_file_sha256"] = hashlib.sha256(raw).hexdigest()
    if scoring.pca_fit_images:
        settings["pca_fit_images_sha256"] = image_folder_digest(
            scoring.pca_fit_images, field=f"scoring '{scoring.name}' pca_fit_images")
    return content_hash({"scoring": settings, "neural": neural})


def neural_spec(spec: ExperimentSpec, name: str) -> NeuralDataSpec:
    for item in spec.neural_data:
        if item.name == name:
            return item
    raise KeyError(f"no neural_data named '{name}' in experiment '{spec.name}' (known: {[n.name for n in spec.neural_data]})")


def scoring_spec(spec: ExperimentSpec, name: str) -> ScoringSpec:
    for item in spec.scoring:
        if item.name == name:
            return item
    raise KeyError(f"no scoring named '{name}' in experiment '{spec.name}' (known: {[s.name for s in spec.scoring]})")


def load_benchmark(store: Store, neural: NeuralDataSpec) -> NeuralData:
    """The neural data of a benchmark: planted data generated into the store on first use, or the user's file."""
    if neural.kind == "planted":
        key = ensure_planted(store, neural)
        return read_neural_data(store.get_bytes(key), name=f"{neural.name} ({key})")
    path = os.path.expanduser(neural.path or "")
    if Path(path).is_file():
        return read_neural_data(path, name=f"{neural.name} ({path})")
    raw, label = _local_or_store_bytes(store, neural.path or "", f"neural_data '{neural.name}'")
    return read_neural_data(raw, name=f"{neural.name} ({label})")


def require_finished_run(store: Store, spec: ExperimentSpec, run_name: str) -> str:
    """The run id of a finished run; :class:`ObjectNotFoundError` naming the run when it is not finished."""
    if run_name not in {p.name for p in spec.pretrain}:
        raise KeyError(f"no pretrain run named '{run_name}' in experiment '{spec.name}'")
    run_id = spec.run_id(run_name)
    if not store.exists(f"runs/{run_id}/done.json"):
        raise ObjectNotFoundError(
            f"run '{run_name}' ({run_id}) is not finished: runs/{run_id}/done.json is missing; "
            "run the train stage for it first"
        )
    return run_id


def load_run_checkpoint(store: Store, run_id: str) -> Checkpoint:
    """A finished run's ``final.pt``, verified against its ``done.json`` by the train stage's reader
    (:class:`IntegrityError` naming the key when damaged) before use."""
    return checkpoint_from_bytes(verified_final_checkpoint(store, f"runs/{run_id}"), checkpoint_key(run_id))


def _local_or_store_bytes(store: Store, path: str, what: str) -> tuple[bytes, str]:
    """Bytes of a local file, else of a store key; the label says which."""
    local = os.path.expanduser(path)
    if Path(local).is_file():
        return Path(local).read_bytes(), local
    try:
        in_store = store.exists(path)
    except InvalidKeyError:  # an absolute or odd local path: not a store key either
        in_store = False
    if in_store:
        return store.get_bytes(path), f"store:{path}"
    raise ObjectNotFoundError(f"{what}: no file {path!r} locally or in the store")


def resolve_splits(store: Store, scoring: ScoringSpec, data: NeuralData) -> list[Split]:
    """The scoring entry's train/test splits over ``data``'s stimuli (generated, or read from its split file)."""
    if scoring.splits == "file":
        raw, label = _local_or_store_bytes(store, scoring.split_file or "", f"scoring '{scoring.name}' split_file")
        return read_split_file(raw, data.stimulus_ids, name=f"scoring '{scoring.name}' split_file {label}")
    return make_splits(data.objects, scoring.splits, scoring.n_splits, seed=scoring.seed, test_fraction=scoring.test_fraction)


FitImages = tuple[np.ndarray, str] | None


def pca_fit_images(scoring: ScoringSpec, size: tuple[int, int]) -> FitImages:
    """The scoring entry's PCA fit set (images at the stimuli's size, and their hash), or None (fit on the stimuli)."""
    if not scoring.pca_fit_images:
        return None
    return load_image_folder(scoring.pca_fit_images, size, field=f"scoring '{scoring.name}' pca_fit_images")


def model_features(
    store: Store,
    checkpoint: Checkpoint,
    images: np.ndarray,
    stimulus_hash: str,
    layers: list[str],
    scoring: ScoringSpec,
    *,
    fit: FitImages = None,
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Features of ``layers``: pooled as ``scoring.pooling`` says, or, for the layers in ``scoring.spatial``,
    every unit reduced on the fly (random projection, or streaming PCA fitted on ``fit`` else the stimuli)."""
    spatial = {layer: scoring.spatial[layer] for layer in layers if layer in scoring.spatial}
    pooled = [layer for layer in layers if layer not in spatial]
    features = cached_features(store, checkpoint, images, stimulus_hash, pooled, pooling=scoring.pooling,
                               grid=scoring.grid, batch_size=scoring.batch_size, device=scoring.device,
                               progress=progress) if pooled else {}
    if spatial:  # within the one feature cap, with what the pooled layers already hold
        budget = MAX_FEATURE_BYTES - sum(int(x.nbytes) for x in features.values())
        features.update(cached_spatial_features(
            store, checkpoint, images, stimulus_hash, spatial, seed=scoring.seed,
            fit_images=fit[0] if fit else None, fit_hash=fit[1] if fit else None,
            batch_size=scoring.batch_size, device=scoring.device, progress=progress, max_bytes=budget))
    return {layer: features[layer] for layer in layers}


def mapped_features(
    store: Store,
    checkpoint: Checkpoint,
    features: dict[str, np.ndarray],
    scoring: ScoringSpec,
    *,
    fit: FitImages = None,
) -> dict[str, np.ndarray]:
    """What the mapping regresses on: each pooled layer's features PCA-reduced to ``pca_components``, the PCA
    fitted on the features of the ``fit`` images when given (as Brain-Score fits on ImageNet), else on the
    stimuli; spatial layers as they are (already reduced)."""
    pooled = [layer for layer in features if layer not in scoring.spatial]
    needs_fit = [layer for layer in pooled if scoring.pca_components is not None
                 and features[layer].shape[1] > scoring.pca_components]
    fit_features = {}
    if fit is not None and needs_fit:
        fit_features = cached_features(store, checkpoint, fit[0], fit[1], needs_fit, pooling=scoring.pooling,
                                       grid=scoring.grid, batch_size=scoring.batch_size, device=scoring.device)
    return {layer: (reduce_pca(x, scoring.pca_components, seed=scoring.seed, fit_on=fit_features.get(layer))
                    if layer in pooled else np.asarray(x, dtype=np.float64))
            for layer, x in features.items()}


def _stage(progress: ProgressFn | None, task: str, done: int, total: int) -> None:
    if progress:
        progress(task, done, total)


def score_checkpoint(
    store: Store,
    checkpoint: Checkpoint,
    data: NeuralData,
    scoring: ScoringSpec,
    *,
    time_window_ms: tuple[float, float] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Predictivity and RSA of every configured layer against every region of ``data``.

    ``time_window_ms``: average only the time bins inside it (the data set entry's window).

    Returns
    -------
    result : dict (JSON-able)
        ``predictivity[region][layer]`` (raw r, ceiling, r/ceiling, r²/ceiling, split
        spread, bootstrap CIs), ``rsa[region][layer]``, ``rsa_ceiling[region]``,
        ``ceiling[region]``, ``best_layer[region]``.
    rdms : dict name → condensed RDM
        ``region:<r>`` and ``layer:<l>`` RDMs (for figures).
    """
    layers = list(scoring.layers)
    fit = pca_fit_images(scoring, data.images.shape[1:3])
    features = model_features(
        store, checkpoint, data.images, data.stimulus_set_hash(), layers, scoring, fit=fit,
        progress=(lambda _t, d, t: _stage(progress, "features", d, t)) if progress else None,
    )
    splits = resolve_splits(store, scoring, data)
    presentations = data.presentations(time_window_ms)
    mean = presentations.mean(axis=1)
    reduced = mapped_features(store, checkpoint, features, scoring, fit=fit)
    layer_rdms = {layer: rdm(features[layer], scoring.rdm_metric) for layer in layers}
    result: dict = {"predictivity": {}, "rsa": {}, "rsa_ceiling": {}, "ceiling": {}, "best_layer": {},
                    "feature_dims": {l: int(features[l].shape[1]) for l in layers},
                    "mapped_dims": {l: int(reduced[l].shape[1]) for l in layers},
                    "pca_fit": ({"images": scoring.pca_fit_images, "count": int(len(fit[0])), "sha256": fit[1]}
                                if fit else "stimuli")}
    rdms: dict[str, np.ndarray] = {}
    regions = data.region_names()
    steps, step = len(regions) * (len(layers) + 1), 0
    for region in regions:
        cols = np.flatnonzero(data.regions.astype(str) == region)
        ceiling = reliability_ceiling(presentations[:, :, cols])
        brainscore_ceiling = brainscore_internal_consistency(presentations[:, :, cols])
        result["ceiling"][region] = {"median": float(np.median(ceiling)), "neuroids": ceiling.tolist(),
                                     "brainscore": {"ceiling": brainscore_ceiling["ceiling"],
                                                    "split_ceilings": brainscore_ceiling["split_ceilings"]}}
        per_layer = {}
        for layer in layers:
            scored = score_predictivity(
                reduced[layer], mean[:, cols], splits, ceiling, mapping=scoring.mapping,
                n_components=scoring.pls_components, ridge_alphas=scoring.ridge_alphas,
                bootstrap=scoring.bootstrap, seed=scoring.seed, brainscore_ceiling=brainscore_ceiling["ceiling"],
            )
            per_layer[layer] = scored.summary()
            step += 1
            _stage(progress, f"predictivity {region}", step, steps)
        result["predictivity"][region] = per_layer
        result["best_layer"][region] = max(layers, key=lambda l: per_layer[l]["raw"])
        region_rdm = rdm(mean[:, cols], scoring.rdm_metric)
        rdms[f"region:{region}"] = region_rdm
        similarity = compare_rdms(np.stack([layer_rdms[l] for l in layers]), region_rdm, scoring.rsa_compare)[:, 0]
        ceiling_rsa = rsa_noise_ceiling(presentations[:, :, cols], metric=scoring.rdm_metric, method=scoring.rsa_compare,
                                        seed=scoring.seed)
        result["rsa"][region] = {l: float(v) for l, v in zip(layers, similarity)}
        result["rsa_ceiling"][region] = ceiling_rsa
        step += 1
        _stage(progress, f"rsa {region}", step, steps)
    rdms.update({f"layer:{l}": layer_rdms[l] for l in layers})
    result["split_indices"] = [test.tolist() for _, test in splits]
    return result, rdms


def score_run(
    spec: ExperimentSpec,
    store: Store,
    scoring: ScoringSpec,
    run_name: str,
    benchmark: str,
    *,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> dict:
    """Score a finished run against a benchmark; write ``scores/<run_id>/<benchmark>.json`` and PNGs.

    Skips (returns the stored JSON) when a score with the same settings exists, unless ``force``.
    """
    run_id = require_finished_run(store, spec, run_name)
    neural = neural_spec(spec, benchmark)
    key = score_key(run_id, benchmark)
    settings_hash = scoring_hash(scoring, neural, store)
    if not force and store.exists(key):
        existing = store.get_json(key)
        if existing.get("settings_hash") == settings_hash:
            existing["skipped"] = True
            return existing
    started = time.perf_counter()
    checkpoint = load_run_checkpoint(store, run_id)
    data = load_benchmark(store, neural)
    result, rdms = score_checkpoint(store, checkpoint, data, scoring, time_window_ms=neural.time_window_ms, progress=progress)
    base = f"scores/{run_id}/{benchmark}"
    title = f"{run_name} ({run_id}) vs {benchmark}" + (" [SYNTHETIC planted data]" if data.synthetic else "")
    figures = {f"{base}-predictivity.png": predictivity_figure(result["predictivity"], title),
               f"{base}-rdms.png": rdm_figure(rdms, np.argsort(data.objects.astype(str), kind="stable"), title)}
    for fig_key, png in figures.items():
        store.put_bytes(fig_key, png)
    record = {
        "run": run_name, "run_id": run_id, "benchmark": benchmark, "scoring": scoring.name,
        "settings_hash": settings_hash, "checkpoint": {"key": checkpoint.key, "sha256": checkpoint.sha256,
                                                      "model": checkpoint.model_name, "input_size": checkpoint.input_size},
        "data": {"name": data.name, "synthetic": data.synthetic, "stimuli": data.n_stimuli,
                 "repetitions": data.n_repetitions, "neuroids": data.n_neuroids, "regions": data.region_names(),
                 "planted_layer": neural.planted_layer if neural.kind == "planted" else None,
                 "planted_reliability": neural.reliability if neural.kind == "planted" else None},
        "settings": scoring.model_dump(mode="json"),
        "normalisation": NORMALISATION,
        "splits": {"scheme": scoring.splits, "n_splits": len(result["split_indices"]),
                   "file": scoring.split_file, "test": result.pop("split_indices")},
        "time_window_ms": list(neural.time_window_ms) if neural.time_window_ms else None,
        **result,
        "figures": sorted(figures),
        "seconds": round(time.perf_counter() - started, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    store.put_json(key, record)  # written last: its presence means the score is complete
    return record


def compare_models(
    spec: ExperimentSpec,
    store: Store,
    scoring: ScoringSpec,
    run_a: str,
    run_b: str,
    benchmark: str,
    *,
    layers_a: list[str] | None = None,
    layers_b: list[str] | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> dict:
    """Model–model RSA: similarity of every layer RDM of ``run_a`` to every layer RDM of ``run_b`` on a benchmark's stimuli.

    Writes ``scores/<run_id_a>/<benchmark>-vs-<run_id_b>.json`` and a PNG; returns the record.
    """
    # checked first: a long or repeated list must cost nothing (each layer holds features and an RDM)
    layers_a = check_layers(list(layers_a or scoring.layers), "layers_a")
    layers_b = check_layers(list(layers_b or scoring.layers), "layers_b")
    run_id_a = require_finished_run(store, spec, run_a)
    run_id_b = require_finished_run(store, spec, run_b)
    neural = neural_spec(spec, benchmark)
    key = comparison_key(run_id_a, run_id_b, benchmark)
    settings_hash = content_hash({"s": scoring_hash(scoring, neural), "a": layers_a, "b": layers_b})
    if not force and store.exists(key):
        existing = store.get_json(key)
        if existing.get("settings_hash") == settings_hash:
            existing["skipped"] = True
            return existing
    data = load_benchmark(store, neural)
    rdm_sets = []
    for i, (run_id, layers) in enumerate(((run_id_a, layers_a), (run_id_b, layers_b))):
        checkpoint = load_run_checkpoint(store, run_id)
        fit = pca_fit_images(scoring, data.images.shape[1:3]) if scoring.spatial else None
        feats = model_features(store, checkpoint, data.images, data.stimulus_set_hash(), layers, scoring, fit=fit)
        rdm_sets.append(np.stack([rdm(feats[l], scoring.rdm_metric) for l in layers]))
        _stage(progress, "compare features", i + 1, 3)
    similarity = compare_rdms(rdm_sets[0], rdm_sets[1], scoring.rsa_compare)
    _stage(progress, "compare rsa", 3, 3)
    png_key = key.removesuffix(".json") + ".png"
    store.put_bytes(png_key, model_model_figure(similarity, layers_a, layers_b, run_a, run_b, scoring.rsa_compare))
    record = {
        "run_a": run_a, "run_id_a": run_id_a, "run_b": run_b, "run_id_b": run_id_b, "benchmark": benchmark,
        "settings_hash": settings_hash, "layers_a": layers_a, "layers_b": layers_b,
        "rdm_metric": scoring.rdm_metric, "method": scoring.rsa_compare,
        "similarity": similarity.tolist(), "figure": png_key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    store.put_json(key, record)
    return record
