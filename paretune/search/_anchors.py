"""Anchors: the first trials of a new study, enqueued so that the front and the sampler have
good points at once: the plain fine-tune, and standard compressions of it.

With ``train.init: finetuned`` in the space, the plain fine-tune is the study's reference
(trained once, see ``paretune.reference``) measured as it is, and the compressions start
from it: int8 weights, and 4-bit weights (groups of 32 and of 128) on the task's tokens
only, with no further training; and half the layers recovered with three epochs of
distillation at 4 bits, with its whole vocabulary and with the task's tokens only.
Otherwise each anchor fine-tunes the pretrained base with the reference's recipe. Every
anchor is drawn through the study's own space (``suggest``), so it is a point the space
holds: a number outside the config's range or list takes the nearest value it allows (3
recovery epochs become 1 where `train.epochs: [0, 1]`); an anchor the config rules out
otherwise (say, a fixed quant.format) is dropped, and so are duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from paretune.search._space import suggest

__all__ = ["anchors"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Answer:
    """Stands in for ``optuna.Trial`` while ``suggest`` walks the space: answers each knob
    from the anchor, or with its family's default, or the middle of its range. A choice the
    space does not hold marks the anchor invalid."""

    def __init__(self, wanted: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        self.wanted, self.defaults = wanted, defaults
        self.params: dict[str, Any] = {}  # the searched knobs: what enqueue_trial takes
        self.valid = True

    def _pick(self, name: str, value: Any) -> Any:
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        if name in self.wanted:
            want = self.wanted[name]
            if want in choices:
                return self._pick(name, want)
            if _number(want) and all(_number(c) for c in choices):  # a list of epochs, say
                return self._pick(name, min(choices, key=lambda c: abs(c - want)))
            self.valid = False
            return choices[0]
        default = self.defaults.get(name)
        return self._pick(name, default if default in choices else choices[0])

    def _number(self, name: str, low: float, high: float, log: bool) -> float:
        value = self.wanted.get(name)
        if value is None:
            value = math.sqrt(low * high) if log and low > 0 else (low + high) / 2
        return min(high, max(low, value))

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        value = self._number(name, low, high, log)
        if step:
            value = low + round((value - low) / step) * step
        return float(self._pick(name, value))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False,
                    step: int = 1) -> int:
        value = round(self._number(name, low, high, log))
        return int(self._pick(name, low + (value - low) // step * step))


def anchors(space: Mapping[str, Any], info: Any, recipe: Mapping[str, Any]) -> list[dict]:
    """The anchors' searched knobs (for ``study.enqueue_trial``), in order, deduplicated.

    ``recipe`` is the reference's training recipe (``reference.recipe_for``): the plain
    fine-tune of the pretrained base when the space does not start from the reference.
    """
    from paretune import spaces
    from paretune.search._space import _defaults

    defaults = {f"{f.name}.{k}": v for f in spaces.families() for k, v in _defaults(f).items()}
    full = {"peft.method": "none", "arch.n_layers": info.n_layers, "prune.ratio": 0.0,
            "distill.enabled": False, "quant.format": "fp32", "vocab.keep": "all"}
    starts = _starts(space, recipe)
    smallest = {**full, **starts["recover"], "arch.n_layers": max(1, info.n_layers // 2),
                "arch.layer_selection": "first", "distill.enabled": True,
                "distill.temperature": 2.0, "distill.alpha": 0.5, "quant.format": "int4-g32"}
    trimmed = {**full, **starts["as is"], "vocab.keep": "task"}
    wanted = [
        {**full, **starts["as is"]},
        {**full, **starts["as is"], "quant.format": "int8"},
        # no training: the cheapest near-lossless points, below the embedding table's floor
        {**trimmed, "quant.format": "int4-g32"},
        {**trimmed, "quant.format": "int4-g128"},
        smallest,
        {**smallest, "vocab.keep": "task"},
    ]
    out: list[dict[str, Any]] = []
    for anchor in wanted:
        answer = _Answer(anchor, defaults)
        suggest(answer, space, info)  # type: ignore[arg-type]
        if answer.valid and answer.params not in out:
            out.append(answer.params)
    return out


def _starts(space: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """How anchors train: from the reference (no training, or a short recovery), or from
    the pretrained base with the reference's own recipe."""
    init = space.get("train.init")
    finetuned = init is not None and "finetuned" in init.endpoints()
    fresh = {"train.init": "pretrained", "train.lr": recipe["lr"],
             "train.epochs": recipe["epochs"], "train.batch_size": recipe["batch_size"],
             "train.head_lr_scale": recipe["head_lr_scale"]}
    if not finetuned:
        return {"as is": fresh, "recover": fresh}
    return {
        "as is": {"train.init": "finetuned", "train.epochs": 0},
        "recover": {"train.init": "finetuned", "train.epochs": 3, "train.lr": 3e-4,
                    "train.batch_size": recipe["batch_size"]},
    }
