"""Training hyperparameters, and the training loop that uses them (stage TRAIN)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.spaces._base import (
    Choice,
    FamilyConfig,
    Float,
    Int,
    Stage,
    TrialContext,
    register_family,
)

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig(FamilyConfig):
    """Fine-tuning with AdamW.

    lr: peak learning rate. epochs: passes over the training split. batch_size: examples per
    optimizer step. weight_decay: AdamW decoupled weight decay. warmup_ratio: fraction of the
    steps over which the rate rises linearly from 0 to lr. scheduler: decay after warm-up,
    `linear` (to 0), `cosine` (to 0) or `constant`. precision: autocast dtype of forward and
    backward, `fp32`, `bf16` (CPU or a GPU that has it) or `fp16` (CUDA only).
    """

    lr: float = 5e-4
    epochs: int = 2
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not 0.0 < self.lr <= 1.0:
            raise ConfigError(f"`0 < train.lr <= 1` must hold, but got {self.lr}.")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(
                f"`train.epochs >= 1` (an integer) must hold, but got {self.epochs}."
            )
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(
                f"`train.batch_size >= 1` (an integer) must hold, but got {self.batch_size}."
            )
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ConfigError(
                f"`0 <= train.weight_decay <= 1` must hold, but got {self.weight_decay}."
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"`0 <= train.warmup_ratio < 1` must hold, but got {self.warmup_ratio}."
            )
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"train.scheduler must be one of {', '.join(SCHEDULERS)}, "
                f"but got {self.scheduler!r}."
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"train.precision must be one of {', '.join(PRECISIONS)}, "
                f"but got {self.precision!r}."
            )


def lr_factor(step: int, total: int, warmup: int, scheduler: str) -> float:
    """Multiplier of the peak rate at ``step``: linear warm-up, then the scheduler's decay."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def autocast_dtype(precision: str, device: str) -> Any:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32); fails fast where
    the device lacks it."""
    import torch

    if precision == "fp32":
        return None
    dev = device.split(":")[0]
    if precision == "fp16" and dev != "cuda":
        raise TrialFailed(
            f"train.precision fp16 needs a CUDA GPU, but the trial runs on {device}; "
            "use bf16 or fp32 there."
        )
    if precision == "bf16" and dev == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrialFailed("train.precision bf16 is not supported by this GPU; use fp16 or fp32.")
    return torch.bfloat16 if precision == "bf16" else torch.float16


PROGRESS_EVERY_S = 20.0  # a long epoch reports its step this often (ctx.log, see progress.py)

def batches(data: Any, batch_size: int, order: Any, device: str) -> Any:
    """Yield (inputs, labels) from a right-padded tokenized split, trimmed to the longest row
    of each batch. Labels are class ids [B], or token ids [B, T] (-100 = no loss) for LMs."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        mask = data.attention_mask[idx]
        width = int(mask.sum(dim=1).max())
        batch = {"input_ids": data.input_ids[idx, :width], "attention_mask": mask[:, :width]}
        labels = data.labels[idx]
        if labels.dim() == 2:
            labels = labels[:, :width]
        yield {k: v.to(device) for k, v in batch.items()}, labels.to(device)


def task_loss(logits: Any, labels: Any) -> Any:
    """Cross-entropy of the task: per example for classification, per next token for LMs."""
    import torch.nn.functional as F

    if labels.dim() == 1:
        return F.cross_entropy(logits.float(), labels)
    shifted = logits[:, :-1].float()
    return F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def fit(
    model: Any,
    cfg: TrainConfig,
    data: Any,
    device: str,
    seed: int,
    loss_terms: Any = (),
    step_hooks: Any = (),
    log: Any = lambda line: None,
) -> tuple[float, float]:
    """Train ``model`` in place on a tokenized split; returns (seconds, mean loss).

    ``loss_terms`` are ``term(loss, logits, batch, labels) -> loss`` (e.g. distillation);
    ``step_hooks`` are called with the step number after each optimizer step (e.g. AdaLoRA's
    rank reallocation, which reads that step's gradients); ``log`` gets progress lines.
    """
    import torch

    dtype = autocast_dtype(cfg.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrialFailed("the model has no trainable parameters: check peft.method.")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.scheduler)
    )
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start, step, loss_sum = time.perf_counter(), 0, 0.0
    shown = start
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        epoch_start, epoch_loss = step, 0.0
        for batch, labels in batches(data, cfg.batch_size, order, device):
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                out = model(**batch)
                loss = task_loss(out.logits, labels)
                for term in loss_terms:
                    loss = term(loss, out.logits, batch, labels)
            if not torch.isfinite(loss):
                raise TrialFailed(
                    f"training loss became {loss.item()} at step {step} (epoch {epoch}); "
                    "lower train.lr."
                )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            for hook in step_hooks:
                hook(step)
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()
            loss_sum += value
            epoch_loss += value
            if time.perf_counter() - shown >= PROGRESS_EVERY_S:
                shown = time.perf_counter()
                log(
                    f"epoch {epoch + 1}/{cfg.epochs} step {step - epoch_start}/{steps_per_epoch}"
                    f" loss {epoch_loss / (step - epoch_start):.4g} ({shown - start:.0f}s)"
                )
        shown = time.perf_counter()
        mean = epoch_loss / max(1, step - epoch_start)
        log(f"epoch {epoch + 1}/{cfg.epochs} done: loss {mean:.4g} ({shown - start:.1f}s)")
    model.eval()
    return time.perf_counter() - start, loss_sum / max(1, step)


def train(model: Any, cfg: TrainConfig, ctx: TrialContext) -> Any:
    seconds, loss = fit(
        model, cfg, ctx.train_data, ctx.device, ctx.seed, ctx.loss_terms, ctx.step_hooks,
        log=ctx.log,
    )
    ctx.stats["train_time_s"] = seconds
    ctx.stats["train_loss"] = loss
    return model


register_family(
    "train",
    TrainConfig,
    train,
    stage=Stage.TRAIN,
    knobs={
        "lr": Float(1e-5, 1e-3, log=True),
        "epochs": Int(1, 3),
        "batch_size": Choice(8, 16, 32),
        "weight_decay": Float(0.0, 0.1),
        "warmup_ratio": Float(0.0, 0.2, step=0.05),
        "scheduler": Choice(*SCHEDULERS),
        "precision": Choice("fp32"),  # bf16 / fp16 are device-dependent: name them to search
    },
)
