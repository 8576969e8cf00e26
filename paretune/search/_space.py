"""The joint space, define-by-run: a family's knobs are suggested only on its branch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["grid_points", "suggest"]


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
            if family.knob_active(knob, params):
                name = f"{family.name}.{knob}"
                params[name] = space.get(name, default).suggest(trial, name)
    return params


def grid_points(cfg: Any) -> list[dict[str, Any]]:
    """Every distinct combination of the searched knobs, branch by branch.

    A conditional family's knobs multiply only the branches where it is active, so
    ``peft.method: [none, lora]`` with ``lora.r: [4, 8]`` gives 3 points, not 4.
    Raises ConfigError if a searched knob is a continuous range.
    """
    from paretune import spaces
    from paretune.errors import ConfigError

    points: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {})]  # (all params, searched)
    for family in spaces.families():
        for knob, default in family.knobs.items():
            name = f"{family.name}.{knob}"
            active = [
                family.is_active(params) and family.knob_active(knob, params)
                for params, _ in points
            ]
            if not any(active):
                continue  # never applies on any branch: its range does not matter
            values = cfg.space.get(name, default).grid()
            if values is None:
                raise ConfigError(
                    f"study.sampler 'grid' needs a finite list for every knob, but {name} is a "
                    f"continuous range; give space.{name} a list of values or a step."
                )
            grown = []
            for (params, searched), on in zip(points, active):
                if not on:
                    grown.append((params, searched))
                    continue
                for v in values:
                    extra = {name: v} if len(values) > 1 else {}
                    grown.append(({**params, name: v}, {**searched, **extra}))
            points = grown
    return [searched for _, searched in points]
