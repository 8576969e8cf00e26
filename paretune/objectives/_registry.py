"""The objective registry: what a trial measures, and which way is better."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Objective", "Outcome", "get_objective", "objectives", "register_objective"]


@dataclass
class Outcome:
    """A finished trial as the objectives see it: the model as it ships and what it cost.

    Objectives read it and change nothing; ``cache`` lets several share one computation
    (e.g. eval predictions).
    """

    model: Any
    eval_data: Any
    artifact_dir: str
    device: str
    task_type: str
    stats: dict[str, float]
    measure: dict[str, Any]
    cache: dict[str, Any]


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" | "minimize"
    fn: Callable[[Outcome], float]
    tasks: tuple[str, ...]
    doc: str


_REGISTRY: dict[str, Objective] = {}


def register_objective(
    name: str,
    direction: str,
    *,
    tasks: tuple[str, ...] = ("classification",),
) -> Callable[[Callable[[Outcome], float]], Callable[[Outcome], float]]:
    """Decorator: register ``fn(outcome) -> float`` as the metric ``name``."""
    if not re.match(r"^[a-z][a-z0-9_]*$", name):
        raise ValueError(f"objective name must be lower-case snake case, but got {name!r}.")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be maximize or minimize, but got {direction!r}.")

    def wrap(fn: Callable[[Outcome], float]) -> Callable[[Outcome], float]:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered already.")
        _REGISTRY[name] = Objective(name, direction, fn, tasks, (fn.__doc__ or "").strip())
        return fn

    return wrap


def objectives(task_type: str | None = None) -> list[Objective]:
    return [o for o in _REGISTRY.values() if task_type is None or task_type in o.tasks]


def get_objective(name: str) -> Objective:
    return _REGISTRY[name]
