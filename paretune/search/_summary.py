"""What a trial actually did, in a few words: its effective settings.

A trial records every active knob (``params``), most of them at values that change
nothing. The effective settings are the knobs a reader needs to tell two points apart:
those away from their family's default, and the switches that make another knob count
(``peft.method=lora`` while ``lora.r`` applies, ``distill.enabled=True`` while
``distill.alpha`` does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["effective_params", "format_params", "summary"]


def _defaults() -> dict[str, Any]:
    from paretune import spaces

    out: dict[str, Any] = {}
    for family in spaces.families():
        for f in dataclasses.fields(family.config_cls):
            if f.default is not dataclasses.MISSING:
                out[f"{family.name}.{f.name}"] = f.default
    return out


def _live_switches(params: Mapping[str, Any]) -> set[str]:
    """Knobs on which an active family or knob depends, given ``params``."""
    from paretune import spaces

    live: set[str] = set()
    for family in spaces.families():
        if not family.is_active(params):
            continue
        if any(f"{family.name}.{k}" in params for k in family.knobs):
            live.update(family.when)
        for knob, cond in family.knob_when.items():
            if f"{family.name}.{knob}" in params and family.knob_active(knob, params):
                live.update(cond)
    return live


def effective_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of ``params`` that are away from their default, or switch another on."""
    defaults, live = _defaults(), _live_switches(params)
    return {
        k: v for k, v in params.items()
        if k in live or k not in defaults or defaults[k] != v
    }


def format_params(params: Mapping[str, Any], sep: str = " ") -> str:
    return sep.join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def summary(params: Mapping[str, Any]) -> str:
    """One readable line: the effective settings, e.g. ``peft.method=lora, lora.r=16,
    quant.format=nf4-g64, train.lr=0.0003``."""
    return format_params(effective_params(params), ", ") or "defaults"
