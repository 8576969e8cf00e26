"""AdaLoRA through peft (stage ADAPT): LoRA whose rank budget is reallocated while training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces import _layout
from paretune.spaces._base import Choice, FamilyConfig, Stage, TrialContext, register_family
from paretune.spaces.lora import TARGETS, check_targets, shape_targets, target_modules

RANKS = ("8/2", "8/4", "12/4", "12/6", "16/4", "16/8")


@dataclass(frozen=True)
class AdaloraConfig(FamilyConfig):
    """ranks: `INIT/TARGET`, the rank every adapter starts with and the average rank left
    after the budget is pruned by importance (TARGET < INIT: one choice of valid pairs).
    alpha: scaling numerator. targets: as lora.targets.
    """

    ranks: str = "12/4"
    alpha: int = 16
    targets: str = "qv"

    def __post_init__(self) -> None:
        init, _, target = str(self.ranks).partition("/")
        if not (init.isdigit() and target.isdigit() and 1 <= int(target) < int(init)):
            raise ConfigError(
                f"adalora.ranks must be 'INIT/TARGET' with 1 <= TARGET < INIT (peft prunes the "
                f"rank budget from INIT down to TARGET), e.g. '12/4', but got {self.ranks!r}."
            )
        if not self.alpha > 0:
            raise ConfigError(f"`adalora.alpha > 0` must hold, but got {self.alpha}.")
        if self.targets not in TARGETS:
            raise ConfigError(
                f"adalora.targets must be one of {', '.join(TARGETS)}, but got {self.targets!r}."
            )

    @property
    def init_r(self) -> int:
        return int(str(self.ranks).partition("/")[0])

    @property
    def target_r(self) -> int:
        return int(str(self.ranks).partition("/")[2])


def total_steps(ctx: TrialContext) -> int:
    """Optimizer steps of the trial's training run (AdaLoRA schedules its budget over them)."""
    epochs = int(ctx.params.get("train.epochs", 2))
    batch = int(ctx.params.get("train.batch_size", 16))
    return max(1, epochs * math.ceil(len(ctx.train_data) / batch))


def apply(model: Any, cfg: AdaloraConfig, ctx: TrialContext) -> Any:
    import peft

    from paretune.spaces.peft import head_modules

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
        modules_to_save=head_modules(model, ctx),
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
        "ranks": Choice(*RANKS),
        "alpha": Choice(8, 16, 32),
        "targets": Choice(*TARGETS),
    },
    shape=shape_targets,
    check=check_targets,
)
