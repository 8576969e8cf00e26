"""How the model is adapted: which weights train (stage ADAPT), merged back after training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces._base import Choice, FamilyConfig, Stage, TrialContext, register_family

METHODS = ("none", "lora")


@dataclass(frozen=True)
class PeftConfig(FamilyConfig):
    """method: `none` fine-tunes every weight; `lora` trains low-rank adapters (lora.*)."""

    method: str = "lora"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"peft.method must be one of {', '.join(METHODS)}, but got {self.method!r}."
            )


def merge(model: Any, cfg: PeftConfig, ctx: TrialContext) -> Any:
    """Fold trained adapters into the base weights: the artifact is a plain model."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return model


register_family(
    "peft",
    PeftConfig,
    None,
    stage=Stage.ADAPT,
    knobs={"method": Choice(*METHODS)},
    compress=merge,
)
