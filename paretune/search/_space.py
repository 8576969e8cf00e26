"""The joint space, define-by-run: a family's knobs are suggested only on its branch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["suggest"]


def suggest(trial: optuna.Trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Every active knob's value for this trial: searched ones from Optuna, fixed ones as set.

    ``space`` holds the config's overrides; knobs it does not name keep their family's
    default range.
    """
    from paretune import spaces

    params: dict[str, Any] = {}
    for family in spaces.families():
        if not family.is_active(params):
            continue
        for knob, default in family.knobs.items():
            name = f"{family.name}.{knob}"
            params[name] = space.get(name, default).suggest(trial, name)
    return params
