"""Layer dropping (stage ARCH): keep k transformer layers of the pretrained model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces import _layout
from paretune.spaces._base import (
    Choice,
    FamilyConfig,
    Int,
    SpaceInfo,
    Stage,
    Switch,
    TrialContext,
    register_family,
)

SELECTIONS = ("first", "spread", "last")


@dataclass(frozen=True)
class ArchConfig(FamilyConfig):
    """n_layers: transformer layers kept (0 keeps all). layer_selection: which ones, `first`
    (the bottom k), `spread` (evenly spaced, first and last included) or `last` (the top k).
    """

    n_layers: int = 0
    layer_selection: str = "first"

    def __post_init__(self) -> None:
        if not (isinstance(self.n_layers, int) and self.n_layers >= 0):
            raise ConfigError(
                "`arch.n_layers >= 0` (an integer, 0 keeps all) must hold, "
                f"but got {self.n_layers}."
            )
        if self.layer_selection not in SELECTIONS:
            raise ConfigError(
                f"arch.layer_selection must be one of {', '.join(SELECTIONS)}, "
                f"but got {self.layer_selection!r}."
            )


def select(n_total: int, k: int, how: str) -> list[int]:
    """Indices of the k layers kept out of n_total."""
    if how == "first":
        return list(range(k))
    if how == "last":
        return list(range(n_total - k, n_total))
    if k == 1:
        return [0]
    return sorted({round(i * (n_total - 1) / (k - 1)) for i in range(k)})


def shape(info: SpaceInfo) -> dict[str, Any] | str:
    """From a sixth of the model's layers (at least 1) to all of them; all of them when the
    trial does not train (``train.epochs`` 0: the reference compressed as it is), since a
    model cut by layers and not trained again scored 0.70 or less, often at chance
    (bench/RESULTS.md). There it is 0 (keep all), so that no ``layer_selection`` is drawn:
    which layers of all of them are kept changes nothing (``_inert``: a trained point at
    full depth drawn again with another selection is a twin)."""
    if _layout.layout_of(info.model_type) is None:
        return f"paretune does not know where model type {info.model_type!r} keeps its layers"
    every = Int(0, 0)
    return {"n_layers": Switch("train.epochs", {0: every},
                               Int(max(1, info.n_layers // 6), info.n_layers))}


def check(cfg: ArchConfig, info: SpaceInfo) -> None:
    if cfg.n_layers > info.n_layers:
        raise ConfigError(
            f"arch.n_layers={cfg.n_layers} but the model has only {info.n_layers} layers; "
            f"use at most {info.n_layers} (or 0 to keep all)."
        )


def apply(model: Any, cfg: ArchConfig, ctx: TrialContext) -> Any:
    import torch.nn as nn

    if cfg.n_layers == 0:
        return model
    layers = _layout.layer_list(model)
    n_total = len(layers)
    if cfg.n_layers >= n_total:
        return model
    keep = select(n_total, cfg.n_layers, cfg.layer_selection)
    _layout.set_layer_list(model, nn.ModuleList([layers[i] for i in keep]))
    config = _layout.backbone(model).config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    for new_idx, layer in enumerate(_layout.layer_list(model)):
        for module in layer.modules():  # KV-cache slots are indexed by position
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    ctx.log(f"arch: kept layers {keep} of {n_total}")
    return model


def _drops(n_layers: int) -> bool:
    return n_layers > 0


def _inert(params: Mapping[str, Any], info: SpaceInfo) -> tuple[str, ...]:
    """Which layers are kept changes nothing when all of them are: a trained point drawn at
    the model's full depth with another selection is the same model."""
    n = params.get("arch.n_layers", 0)
    return ("layer_selection",) if n == 0 or n >= info.n_layers else ()


register_family(
    "arch",
    ArchConfig,
    apply,
    stage=Stage.ARCH,
    knobs={"n_layers": Int(1, 6), "layer_selection": Choice(*SELECTIONS)},
    knob_when={"layer_selection": {"arch.n_layers": _drops}},
    shape=shape,
    check=check,
    inert=_inert,
)
