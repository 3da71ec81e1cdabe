"""What other packages may read of train: where a run's outputs live and how to read them safely.

Everything outside ``services/train`` (neuro, the conductor, the report) imports the train
stage through this module only; the layering test keeps it so. Importing it is light (no torch).

Store layout of a pre-training run (``run_id = spec.run_id(name)``)::

    runs/<run_id>/done.json               written last; lists checkpoint_size / checkpoint_sha256
    runs/<run_id>/checkpoints/final.pt    the contract checkpoint (docs/train-stage.md)
"""

from __future__ import annotations

import json
import logging

from services.common.errors import IntegrityError
from services.common.manifest import ManifestEntry, verify_bytes
from services.common.store import Store

log = logging.getLogger(__name__)


def done_key(run_id: str) -> str:
    return f"runs/{run_id}/done.json"


def final_checkpoint_key(run_id: str) -> str:
    return f"runs/{run_id}/checkpoints/final.pt"


def read_done(store: Store, key: str) -> dict:
    """A run's ``done.json``; :class:`IntegrityError` naming it when it is not a JSON object."""
    data = store.get_bytes(key)
    try:
        done = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"{key}: damaged ({len(data)} bytes, not JSON: {exc})") from None
    if not isinstance(done, dict):
        raise IntegrityError(f"{key}: damaged (a JSON {type(done).__name__}, expected an object)")
    return done


def verified_final_checkpoint(store: Store, prefix: str) -> bytes:
    """The bytes of ``<prefix>/checkpoints/final.pt`` after checking them against ``<prefix>/done.json``.

    :class:`IntegrityError` naming the key when its size or SHA-256 differ from ``checkpoint_size`` /
    ``checkpoint_sha256`` (runs finished before those fields existed are read with a warning).
    """
    done_at, key = f"{prefix}/done.json", f"{prefix}/checkpoints/final.pt"
    done = read_done(store, done_at)
    data = store.get_bytes(key)
    if "checkpoint_sha256" in done:
        verify_bytes(ManifestEntry(key=key, size=done["checkpoint_size"], sha256=done["checkpoint_sha256"]), data,
                     listed_in=f"{done_at} (the checkpoint is damaged: re-run train for this run to re-make it)")
    else:
        log.warning("%s: %s has no checkpoint_sha256 (an older run); reading it unverified", key, done_at)
    return data


# -- evaluations (shape bias, depth probe) ------------------------------------------------
def evaluation_id(spec, entry) -> str:
    """Store name of one evaluation entry (``spec.evaluation.shape_bias[i]`` or ``depth_probe[i]``): its name plus a
    hash of the entry, the run ids it evaluates and the datasets it reads."""
    from services.common.spec.experiment import content_hash

    datasets = [getattr(entry, f, None) for f in ("conflict", "probe", "dataset")]
    inputs = {"entry": entry, "runs": {r: spec.run_id(r) for r in entry.runs},
              "datasets": [spec.dataset_id(d) for d in datasets if d is not None]}
    return f"{entry.name}-{content_hash(inputs)}"


#: The item name that asks the train service (``StartRun``) for the experiment's evaluations.
EVALUATIONS_ITEM = "evaluation"


def has_evaluations(spec) -> bool:
    ev = spec.evaluation
    return bool(ev.shape_bias or ev.depth_probe or ev.recoverability is not None)


def evaluations_run_id(spec) -> str:
    """Run id of an experiment's evaluations as one served run: ``evaluation-<hash of the section and the run ids>``;
    its summary is ``runs/<id>/evaluation.json``."""
    from services.common.spec.experiment import content_hash

    runs = {r.name: spec.run_id(r.name) for r in spec.pretrain}
    return f"evaluation-{content_hash({'evaluation': spec.evaluation, 'runs': runs})[:10]}"


def evaluation_key(evaluation_id: str, run_name: str) -> str:
    """``evaluations/<evaluation_id>/<run>.json``: one run's result (see docs/evaluation.md for the fields)."""
    return f"evaluations/{evaluation_id}/{run_name}.json"
