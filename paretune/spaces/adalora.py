"""AdaLoRA through peft (stage ADAPT): LoRA whose rank budget is reallocated while training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces import _layout
from paretune.spaces._base import Choice, FamilyConfig, Stage, TrialContext, register_family
from paretune.spaces.lora import TARGETS, target_modules


@dataclass(frozen=True)
class AdaloraConfig(FamilyConfig):
    """init_r: rank every adapter starts with. target_r: average rank left after the budget is
    pruned by importance. alpha: scaling numerator. targets: as lora.targets.
    """

    init_r: int = 12
    target_r: int = 4
    alpha: int = 16
    targets: str = "qv"

    def __post_init__(self) -> None:
        for key in ("init_r", "target_r"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"`adalora.{key} >= 1` (an integer) must hold, but got {value}.")
        if not self.alpha > 0:
            raise ConfigError(f"`adalora.alpha > 0` must hold, but got {self.alpha}.")
        if self.targets not in TARGETS:
            raise ConfigError(
                f"adalora.targets must be one of {', '.join(TARGETS)}, but got {self.targets!r}."
            )


def total_steps(ctx: TrialContext) -> int:
    """Optimizer steps of the trial's training run (AdaLoRA schedules its budget over them)."""
    epochs = int(ctx.params.get("train.epochs", 2))
    batch = int(ctx.params.get("train.batch_size", 16))
    return max(1, epochs * math.ceil(len(ctx.train_data) / batch))


def apply(model: Any, cfg: AdaloraConfig, ctx: TrialContext) -> Any:
    import peft

    if cfg.target_r >= cfg.init_r:  # peft's budget mask needs something to prune
        from paretune.errors import TrialFailed

        raise TrialFailed(
            f"`adalora.target_r < adalora.init_r` must hold, but got target_r={cfg.target_r}, "
            f"init_r={cfg.init_r}."
        )
    total = total_steps(ctx)
    tinit, tfinal = total // 10, total // 5
    if total - tinit - tfinal < 1:
        tinit = tfinal = 0
    config = peft.AdaLoraConfig(
        task_type=_layout.peft_task_type(ctx),
        init_r=cfg.init_r,
        target_r=cfg.target_r,
        lora_alpha=cfg.alpha,
        target_modules=target_modules(model, cfg.targets),
        total_step=total,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, total // 20),
    )
    model = peft.get_peft_model(model, config)
    # The rank budget moves after each optimizer step, from the gradients of that step.
    ctx.step_hooks.append(lambda step: model.base_model.update_and_allocate(step))
    return model


register_family(
    "adalora",
    AdaloraConfig,
    apply,
    stage=Stage.ADAPT,
    when={"peft.method": ("adalora",)},
    knobs={
        "init_r": Choice(8, 12, 16),
        "target_r": Choice(2, 4, 6),
        "alpha": Choice(8, 16, 32),
        "targets": Choice(*TARGETS),
    },
)
