"""Objectives by name (:func:`register_objective`, :func:`get_objective`)."""

from __future__ import annotations

from services.train.objectives.base import Objective

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` available as ``cls.name``; duplicates raise."""
    if cls.name in OBJECTIVES:
        raise ValueError(f"an objective named {cls.name!r} is already registered")
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown training objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}") from None
