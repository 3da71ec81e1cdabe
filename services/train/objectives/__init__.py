"""Training objectives as plugins: classification today; segmentation and the 3D prior next.

See :mod:`.base` for the interface. A run's objective is ``run.objective`` when its
spec names one, classification otherwise.
"""

from services.train.objectives import classification  # noqa: F401  (registers the built-in objectives)
from services.train.objectives.base import Objective
from services.train.objectives.registry import OBJECTIVES, get_objective, register_objective


def objective_for(run) -> Objective:
    """The objective instance of a pre-training run."""
    return get_objective(getattr(run, "objective", "classification"))(run)


__all__ = ["OBJECTIVES", "Objective", "get_objective", "objective_for", "register_objective"]
