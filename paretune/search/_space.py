"""The joint space, built for the model and device, then searched define-by-run: a family's
knobs are suggested only on its branch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from paretune.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from paretune.spaces import SpaceInfo

__all__ = ["build_space", "grid_points", "suggest"]


def _defaults(family: Any) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(family.config_cls)}


def build_space(
    overrides: Mapping[str, Any], info: SpaceInfo
) -> tuple[dict[str, Any], list[str]]:
    """Every knob's spec for this study, and one line per family left out of it (or per
    family some of whose choices the model cannot run).

    A knob the config names keeps the config's spec, after every value it can take is checked
    against the model and device (one-line ``ConfigError`` otherwise); any other knob gets
    its family's default range, shaped for the model and device (``register_family``'s
    ``shape``). A family that cannot apply to the model is left out: its knobs are fixed to
    their defaults, which switch it off, so no trial can fail for that known reason.
    """
    from paretune import spaces

    space: dict[str, Any] = {}
    notes: list[str] = []
    for family in spaces.families():
        defaults = _defaults(family)
        shaped: dict[str, Any] = dict(family.knobs)
        left_out, out = None, None
        if family.shape is not None:
            out = family.shape(info)
            if isinstance(out, str):
                left_out = out
                shaped = {k: spaces.Fixed(defaults[k]) for k in family.knobs}
            else:
                shaped.update(out)
        named = {k: overrides[f"{family.name}.{k}"] for k in family.knobs
                 if f"{family.name}.{k}" in overrides}
        if isinstance(out, spaces.Shaped) and out.note and not set(out) <= set(named):
            notes.append(f"{family.name}: {out.note}")  # of choices the config leaves open
        if left_out is not None:
            for knob, spec in named.items():
                if any(v != defaults[knob] for v in spec.endpoints()):
                    raise ConfigError(
                        f"space.{family.name}.{knob}: {family.name} cannot apply to this model "
                        f"({left_out}); remove space.{family.name}.{knob}."
                    )
            notes.append(f"{family.name} is left out of the space: {left_out}.")
        _check_named(family, named, info)
        for knob, spec in shaped.items():
            space[f"{family.name}.{knob}"] = named.get(knob, spec)
    return space, notes


def _check_named(family: Any, named: Mapping[str, Any], info: SpaceInfo) -> None:
    """Every value a config-named knob can take must run on this model and device."""
    if family.check is None:
        return
    fixed = {k: spec.value for k, spec in named.items() if hasattr(spec, "value")}
    for knob, spec in named.items():
        for value in spec.endpoints():
            try:
                family.check(family.config_cls(**{**fixed, knob: value}), info)
            except ConfigError as exc:
                raise ConfigError(f"space.{family.name}.{knob}: {exc}") from None


def suggest(trial: optuna.Trial, space: Mapping[str, Any],
            info: SpaceInfo | None = None) -> dict[str, Any]:
    """Every active knob's value for this trial: searched ones from Optuna, fixed ones as set.

    ``space`` is the study's whole space (``build_space``); a knob whose family or own
    condition does not hold is not suggested and keeps its family's default, and so does a
    knob that changes nothing for the knobs drawn before it on the model of ``info`` (its
    family's ``inert``: which layers are kept, when all of them are), so that the sampler
    spends no dimension on it.
    """
    from paretune import spaces

    params: dict[str, Any] = {}
    for family in spaces.families():
        if not family.is_active(params):
            continue
        for knob in family.knobs:
            if _drawn(family, knob, params, info):
                name = f"{family.name}.{knob}"
                params[name] = spaces.resolve(space[name], params).suggest(trial, name)
    return params


def _drawn(family: Any, knob: str, params: Mapping[str, Any], info: SpaceInfo | None) -> bool:
    """``knob`` is drawn given the knobs drawn before it: its condition holds and, on the
    model of ``info``, it changes something."""
    if not family.knob_active(knob, params):
        return False
    return info is None or family.inert is None or knob not in family.inert(params, info)


def grid_points(space: Mapping[str, Any], info: SpaceInfo | None = None) -> list[dict[str, Any]]:
    """Every distinct combination of the searched knobs, branch by branch.

    A conditional family's knobs multiply only the branches where it is active, so
    ``peft.method: [none, lora]`` with ``lora.r: [4, 8]`` gives 3 points, not 4; nor does a
    knob that changes nothing on the model of ``info`` (``suggest``).
    Raises ConfigError if a searched knob is a continuous range.
    """
    from paretune import spaces

    points: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {})]  # (all params, searched)
    for family in spaces.families():
        for knob in family.knobs:
            name = f"{family.name}.{knob}"
            grown = []
            for params, searched in points:
                if not (family.is_active(params) and _drawn(family, knob, params, info)):
                    grown.append((params, searched))
                    continue
                values = spaces.resolve(space[name], params).grid()
                if values is None:
                    raise ConfigError(
                        f"study.sampler 'grid' needs a finite list for every knob, but {name} "
                        f"is a continuous range; give space.{name} a list of values or a step."
                    )
                for v in values:
                    extra = {name: v} if len(values) > 1 else {}
                    grown.append(({**params, name: v}, {**searched, **extra}))
            points = grown
    return [searched for _, searched in points]
