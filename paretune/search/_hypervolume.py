"""Hypervolume of the front, its reference point, and its history recorded on the study.

The hypervolume is the volume of objective space that the front dominates, bounded by a
reference point ``r``. Objectives to maximize are turned by a sign flip, so a bigger
hypervolume is always better.

Reference point: ``study.reference_point`` in the config, one value per objective, stored
on the study as ``paretune.reference_point``. Without one, it is derived from the completed
feasible trials: for each objective, the worst observed value moved outwards by 10% of the
observed range (by 10% of its magnitude, or 1, when every trial has the same value), so the
extreme points of the front still add volume.

History: after each completed trial the engine stores ``paretune.hypervolume`` on the study,
``{"reference_point": r, "trials": [number, ...], "values": [hv, ...]}`` in completion
order, always against the current reference point, so plots read it without recomputing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from paretune.search._front import _signed

if TYPE_CHECKING:
    import optuna

__all__ = [
    "HISTORY_KEY", "REFERENCE_KEY", "FrontTracker", "derive_reference_point",
    "exact_hypervolume", "hypervolume", "hypervolume_history", "reference_point",
]

HISTORY_KEY = "paretune.hypervolume"
REFERENCE_KEY = "paretune.reference_point"
MARGIN = 0.1


def hypervolume(
    points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]
) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (all in study units).

    Points that are not at least as good as the reference in every objective add nothing.
    """
    import numpy as np

    ref = np.asarray(_signed(reference, directions), dtype=float)
    vals = np.asarray([_signed(p, directions) for p in points], dtype=float).reshape(-1, len(ref))
    inside = vals[(vals <= ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    compute = _optuna_hypervolume() or exact_hypervolume
    return float(compute(inside, ref))


def _optuna_hypervolume() -> Any:
    """Optuna's exact hypervolume (a 2-D sweep, 3-D, WFG above). It is not public API, so
    it is only used where it is found; ``exact_hypervolume`` gives the same values."""
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:
        return None
    return compute_hypervolume


def exact_hypervolume(points: Any, reference: Any) -> float:
    """Volume dominated by ``points`` (minimized, each no worse than ``reference``),
    bounded by ``reference``: a sweep in 2-D, slices along the last objective above."""
    import numpy as np

    pts, ref = np.asarray(points, dtype=float), np.asarray(reference, dtype=float)
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    if pts.shape[1] == 2:
        pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
        xs = np.append(pts[1:, 0], ref[0])
        lows = np.minimum.accumulate(pts[:, 1])
        return float(np.sum((xs - pts[:, 0]) * (ref[1] - lows)))
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    tops = np.append(pts[1:, -1], ref[-1])
    return float(sum(
        (top - pts[i, -1]) * exact_hypervolume(pts[: i + 1, :-1], ref[:-1])
        for i, top in enumerate(tops) if top > pts[i, -1]
    ))


def derive_reference_point(
    points: Sequence[Sequence[float]], directions: Sequence[str], margin: float = MARGIN
) -> list[float] | None:
    """Worst observed value of each objective, moved outwards by ``margin`` of its range."""
    if not points:
        return None
    cols = list(zip(*(_signed(p, directions) for p in points)))
    out = []
    for col, d in zip(cols, directions):
        worst, best = max(col), min(col)
        span = worst - best or abs(worst) or 1.0
        r = worst + margin * span
        out.append(r if d == "minimize" else -r)
    return out


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed feasible trials in the order they completed."""
    import optuna

    done = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("feasible", True) and t.values is not None
    ]
    return sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))


def _directions(study: optuna.Study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def reference_point(study: optuna.Study) -> list[float] | None:
    """The configured reference point of the study, else the one derived from its trials."""
    stored = study.user_attrs.get(REFERENCE_KEY)
    if stored is not None:
        return [float(v) for v in stored]
    return derive_reference_point([t.values for t in _completed(study)], _directions(study))


def hypervolume_history(
    trials: Sequence[Any], directions: Sequence[str], reference: Sequence[float]
) -> list[float]:
    """Hypervolume after each of ``trials`` (in the given order), against ``reference``."""
    from paretune.search._front import pareto_front

    out, front = [], []  # type: ignore[var-annotated]
    for t in trials:
        front = pareto_front([*front, list(t.values)], directions)
        out.append(hypervolume(front, directions, reference))
    return out


class FrontTracker:
    """Keeps the study's recorded hypervolume history current; the engine calls ``update``
    after each told trial. Recomputes the whole history only when the reference point moves.
    """

    def __init__(self, study: optuna.Study, reference: Sequence[float] | None = None) -> None:
        self.study = study
        self.directions = _directions(study)
        stored = study.user_attrs.get(REFERENCE_KEY)
        configured = [float(v) for v in reference] if reference is not None else None
        if stored != configured:
            study.set_user_attr(REFERENCE_KEY, configured)
        self.configured = configured
        self.front: list[list[float]] = []
        self.history: dict[str, Any] = {}
        self.update()

    @property
    def size(self) -> int:
        return len(self.front)

    @property
    def hypervolume(self) -> float | None:
        values = self.history.get("values")
        return values[-1] if values else None

    def update(self) -> None:
        from paretune.search._front import pareto_front

        trials = _completed(self.study)
        points = [list(t.values) for t in trials]
        ref = self.configured or derive_reference_point(points, self.directions)
        numbers = [t.number for t in trials]
        old = self.history
        history: dict[str, Any]
        if ref is None:
            self.front, history = [], {"reference_point": None, "trials": [], "values": []}
        elif old.get("reference_point") == ref and old["trials"] == numbers[: len(old["trials"])]:
            values = list(old["values"])
            for p in points[len(values):]:
                self.front = pareto_front([*self.front, p], self.directions)
                values.append(hypervolume(self.front, self.directions, ref))
            history = {"reference_point": ref, "trials": numbers, "values": values}
        else:
            self.front = pareto_front(points, self.directions)
            values = hypervolume_history(trials, self.directions, ref)
            history = {"reference_point": ref, "trials": numbers, "values": values}
        if history != old:
            self.study.set_user_attr(HISTORY_KEY, history)
        self.history = history
