"""LoRA and DoRA adapters through peft (stage ADAPT); active when peft.method is lora or dora."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces import _layout
from paretune.spaces._base import (
    Choice,
    FamilyConfig,
    Float,
    Int,
    SpaceInfo,
    Stage,
    Switch,
    TrialContext,
    register_family,
)

TARGETS = ("qv", "attention", "all-linear")


@dataclass(frozen=True)
class LoraConfig(FamilyConfig):
    """Low-rank adapters (DoRA: plus a trained magnitude per output). r: rank.
    alpha: scaling numerator (scale = alpha / r).
    dropout: dropout on the adapter input. targets: `qv` (query and value projections),
    `attention` (every attention projection) or `all-linear` (every linear layer but the head).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: str = "qv"

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r >= 1):
            raise ConfigError(f"`lora.r >= 1` (an integer) must hold, but got {self.r}.")
        if not self.alpha > 0:
            raise ConfigError(f"`lora.alpha > 0` must hold, but got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"`0 <= lora.dropout < 1` must hold, but got {self.dropout}.")
        if self.targets not in TARGETS:
            raise ConfigError(
                f"lora.targets must be one of {', '.join(TARGETS)}, but got {self.targets!r}."
            )


def target_modules(model: Any, targets: str) -> Any:
    """peft's target_modules for ``targets`` on this model (``all-linear`` excludes the head;
    a fused query/key/value projection, as GPT-2's, counts as query and value)."""
    if targets == "all-linear":
        return "all-linear"
    lay = _layout.layout(model)
    paths = [lay.q, lay.v] if targets == "qv" else [lay.q, lay.k, lay.v, lay.o]
    return _layout.module_regex(lay, paths)


def shape_targets(info: SpaceInfo) -> dict[str, Any]:
    """Without a known layout only ``all-linear`` can be targeted (peft finds the Linears)."""
    return {} if _layout.layout_of(info.model_type) else {"targets": Choice("all-linear")}


def check_targets(cfg: Any, info: SpaceInfo) -> None:
    if cfg.targets != "all-linear" and _layout.layout_of(info.model_type) is None:
        raise ConfigError(
            f"targets {cfg.targets} name attention projections, which paretune cannot find in "
            f"model type {info.model_type!r}; use targets all-linear."
        )


def apply(model: Any, cfg: LoraConfig, ctx: TrialContext) -> Any:
    import peft

    from paretune.spaces.peft import head_modules

    config = peft.LoraConfig(
        task_type=_layout.peft_task_type(ctx),
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules(model, cfg.targets),
        use_dora=ctx.params.get("peft.method") == "dora",
        modules_to_save=head_modules(model, ctx),
    )
    return peft.get_peft_model(model, config)


register_family(
    "lora",
    LoraConfig,
    apply,
    stage=Stage.ADAPT,
    when={"peft.method": ("lora", "dora")},
    knobs={
        "r": Choice(4, 8, 16, 32),
        # alpha is r or 2r: the learning rates (train.py) were calibrated at alpha / r = 2,
        # and LoRA's steps scale with alpha / r; at 4 and 8 with rates from that range two
        # trials of front run 5 diverged (NaN) and one collapsed to chance on the CPU
        "alpha": Switch("lora.r", {r: Int(r, 2 * r, step=r) for r in (4, 8, 16, 32)},
                        default=Int(16, 32, step=16)),
        "dropout": Float(0.0, 0.2, step=0.05),
        "targets": Choice(*TARGETS),
    },
    shape=shape_targets,
    check=check_targets,
)
