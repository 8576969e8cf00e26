"""Knowledge distillation (added at stage ADAPT, used by TRAIN): the student also matches a
fine-tuned teacher.

The teacher is the study's reference, the base fully fine-tuned on the task once per study
(``paretune.reference``: trained by the first process that needs it, under a file lock in
``cache_dir``, then loaded by every other trial and process). The family adds one loss term,
``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * task loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces._base import Choice, FamilyConfig, Float, Stage, TrialContext, register_family
from paretune.spaces.train import trains


@dataclass(frozen=True)
class DistillConfig(FamilyConfig):
    """enabled: add the distillation loss. temperature: T softening both distributions, in
    [1, 10]. alpha: weight of the distillation term, in [0, 1] (1 - alpha on the task loss).
    """

    enabled: bool = False
    temperature: float = 2.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"distill.enabled must be true or false, but got {self.enabled!r}.")
        if not 1.0 <= self.temperature <= 10.0:
            raise ConfigError(
                f"`1 <= distill.temperature <= 10` must hold, but got {self.temperature}."
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"`0 <= distill.alpha <= 1` must hold, but got {self.alpha}.")


def kd_loss(student: Any, teacher: Any, temperature: float, mask: Any = None) -> Any:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples.

    Class logits are [B, C]; token logits [B, T, V] are averaged over positions where
    ``mask`` ([B, T]) is 1.
    """
    import torch.nn.functional as F

    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    s = F.log_softmax(student.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    if kl.dim() == 2 and mask is not None:
        mask = mask.to(kl.dtype)
        kl = (kl * mask).sum() / mask.sum().clamp_min(1.0)
    else:
        kl = kl.mean()
    return temperature * temperature * kl


def apply(model: Any, cfg: DistillConfig, ctx: TrialContext) -> Any:
    import torch

    from paretune import reference

    if not cfg.enabled or cfg.alpha == 0.0:
        return model
    causal = ctx.task["type"] == "causal_lm"
    num_labels = 0 if causal else int(model.config.num_labels)
    teacher = reference.load_reference(ctx, num_labels, frozen=True)
    kept = None if ctx.kept_ids is None else ctx.kept_ids.to(ctx.device)

    def term(loss: Any, logits: Any, batch: Any, labels: Any) -> Any:
        with torch.no_grad():
            if kept is None:
                target = teacher(**batch).logits
            else:  # a trimmed vocabulary: the teacher reads and predicts the base's ids
                target = teacher(**{**batch, "input_ids": kept[batch["input_ids"]]}).logits
                target = target[..., kept] if target.dim() == 3 else target
        mask = batch["attention_mask"] if logits.dim() == 3 else None
        kd = kd_loss(logits, target, cfg.temperature, mask)
        return cfg.alpha * kd + (1.0 - cfg.alpha) * loss

    ctx.loss_terms.append(term)
    return model


register_family(
    "distill",
    DistillConfig,
    apply,
    stage=Stage.ADAPT,
    knobs={
        "enabled": Choice(False, True),
        "temperature": Float(1.0, 10.0),
        "alpha": Float(0.0, 1.0),
    },
    knob_when={
        "enabled": {"train.epochs": trains},
        "temperature": {"distill.enabled": True},
        "alpha": {"distill.enabled": True},
    },
)
