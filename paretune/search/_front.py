"""Pareto front, knee point and hypervolume over completed, feasible trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["dominates", "knee", "knee_explained", "pareto_front"]


def _signed(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    """Values turned so that smaller is better in every objective."""
    return [v if d == "minimize" else -v for v, d in zip(values, directions)]


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if ``a`` is no worse than ``b`` in every objective and better in one."""
    sa, sb = _signed(a, directions), _signed(b, directions)
    return all(x <= y for x, y in zip(sa, sb)) and any(x < y for x, y in zip(sa, sb))


def pareto_front(points: Sequence[Any], directions: Sequence[str], key: Any = None) -> list[Any]:
    """The non-dominated items of ``points`` (``key(item)`` gives its objective values)."""
    key = key or (lambda p: p)
    vals = [key(p) for p in points]
    return [
        p for i, p in enumerate(points)
        if not any(dominates(vals[j], vals[i], directions) for j in range(len(points)) if j != i)
    ]


def knee(
    points: Sequence[Any], directions: Sequence[str], key: Any = None, prefer: int = 0
) -> Any:
    """The point closest to the ideal corner once every objective is scaled to [0, 1];
    among points equally close, the best in objective ``prefer`` (quality, by default the
    first objective)."""
    return knee_explained(points, directions, key, prefer)[0]


def knee_explained(
    points: Sequence[Any], directions: Sequence[str], key: Any = None, prefer: int = 0
) -> tuple[Any, float, list[Any]]:
    """``knee``, with its scaled distance to the ideal corner and the other points that
    were equally close (the tie ``prefer`` broke)."""
    key = key or (lambda p: p)
    vals = [_signed(key(p), directions) for p in points]
    lows = [min(col) for col in zip(*vals)]
    highs = [max(col) for col in zip(*vals)]
    spans = [(h - lo) or 1.0 for lo, h in zip(lows, highs)]

    def dist(v: Sequence[float]) -> float:
        return float(sum(((x - lo) / s) ** 2 for x, lo, s in zip(v, lows, spans)) ** 0.5)

    dists = [dist(v) for v in vals]
    best = min(dists)
    tied = [i for i, d in enumerate(dists) if d <= best + 1e-9 * max(1.0, best)]
    chosen = min(tied, key=lambda i: vals[i][prefer])  # smaller is better once signed
    return points[chosen], dists[chosen], [points[i] for i in tied if i != chosen]
