"""Training objectives as plugins: classification, segmentation and the 3D prior.

See :mod:`.base` for the interface. A run's objective is its spec's ``task``
(``run.objective`` for runs that name one that way), classification otherwise.
"""

from services.train.objectives import classification, prior3d, segmentation  # noqa: F401  (registers the built-in objectives)
from services.train.objectives.base import Objective
from services.train.objectives.registry import OBJECTIVES, get_objective, register_objective


def objective_for(run) -> Objective:
    """The objective instance of a pre-training run."""
    return get_objective(getattr(run, "objective", None) or getattr(run, "task", None) or "classification")(run)


__all__ = ["OBJECTIVES", "Objective", "get_objective", "objective_for", "register_objective"]
