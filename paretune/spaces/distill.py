"""Knowledge distillation (stage TRAIN): the student also matches a fine-tuned teacher.

The teacher is the uncompressed base model fully fine-tuned on the task, once per study: it
is trained on first need and cached on disk under ``cache_dir/teachers/<key>``, the key a
content hash of the model name, the data fingerprint, the seed, max_length and the teacher's
recipe, so every later trial and every process reuses it. The family adds one loss term,
``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * task loss``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces._base import Choice, FamilyConfig, Float, Stage, TrialContext, register_family

# How the teacher is fine-tuned (full fine-tune); part of its cache key.
TEACHER_RECIPE: dict[str, Any] = {"lr": 5e-4, "epochs": 3, "batch_size": 16, "warmup_ratio": 0.1}

_TEACHERS: dict[str, Any] = {}  # per process: key -> teacher model


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


def teacher_key(ctx: TrialContext) -> str:
    parts = [ctx.model_spec["name"], ctx.data_fingerprint, ctx.seed,
             int(ctx.model_spec.get("max_length", 128)), TEACHER_RECIPE]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def get_teacher(ctx: TrialContext, num_labels: int) -> Any:
    """The task's teacher: from this process, else from the disk cache, else trained now."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    key = teacher_key(ctx)
    if key in _TEACHERS:
        return _TEACHERS[key]
    path = Path(ctx.cache_dir, "teachers", key)
    if not (path / "config.json").exists():
        _train_teacher(ctx, num_labels, path)
    auto = AutoModelForCausalLM if _causal(ctx) else AutoModelForSequenceClassification
    teacher = auto.from_pretrained(path).to(ctx.device).eval()  # type: ignore[arg-type]
    for p in teacher.parameters():
        p.requires_grad = False
    _TEACHERS.clear()  # one teacher per study: keep memory flat
    _TEACHERS[key] = teacher
    return teacher


def _causal(ctx: TrialContext) -> bool:
    return ctx.task["type"] == "causal_lm"


def _train_teacher(ctx: TrialContext, num_labels: int, path: Path) -> None:
    from paretune import models
    from paretune.spaces.train import TrainConfig, fit

    ctx.log(f"distill: fine-tuning the teacher once for this study -> {path}")
    model, _ = models.load_base(
        ctx.model_spec["name"], num_labels, ctx.seed, causal_lm=_causal(ctx)
    )
    model.to(ctx.device)
    seconds, loss = fit(model, TrainConfig(**TEACHER_RECIPE), ctx.train_data, ctx.device, ctx.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        os.replace(tmp, path)  # atomic: a concurrent process sees all of it or nothing
    except OSError:  # another process finished first; its teacher is the same
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.log(f"distill: teacher trained in {seconds:.0f}s (mean loss {loss:.3f})")


def apply(model: Any, cfg: DistillConfig, ctx: TrialContext) -> Any:
    import torch

    if not cfg.enabled or cfg.alpha == 0.0:
        return model
    teacher = get_teacher(ctx, 0 if _causal(ctx) else int(model.config.num_labels))

    def term(loss: Any, logits: Any, batch: Any, labels: Any) -> Any:
        with torch.no_grad():
            target = teacher(**batch).logits
        mask = batch["attention_mask"] if logits.dim() == 3 else None
        kd = kd_loss(logits, target, cfg.temperature, mask)
        return cfg.alpha * kd + (1.0 - cfg.alpha) * loss

    ctx.loss_terms.append(term)
    return model


register_family(
    "distill",
    DistillConfig,
    apply,
    stage=Stage.TRAIN,
    knobs={
        "enabled": Choice(False, True),
        "temperature": Float(1.0, 10.0),
        "alpha": Float(0.0, 1.0),
    },
    knob_when={"temperature": {"distill.enabled": True}, "alpha": {"distill.enabled": True}},
)
