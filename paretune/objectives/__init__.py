"""What a trial measures: quality on held-out data and the cost of the model as it ships.

Each objective is one registered function ``fn(outcome) -> float`` with a direction.
"""

from __future__ import annotations

from paretune.objectives import (
    cost,  # noqa: E402,F401  (registers its objectives)
    quality,  # noqa: E402,F401
)
from paretune.objectives._registry import (
    Objective,
    Outcome,
    get_objective,
    objectives,
    register_objective,
)

__all__ = ["Objective", "Outcome", "get_objective", "objectives", "register_objective"]
