"""Training hyperparameters, and the training loop that uses them (stage TRAIN)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.spaces._base import Choice, FamilyConfig, Float, Int, Stage, TrialContext
from paretune.spaces._base import register_family


@dataclass(frozen=True)
class TrainConfig(FamilyConfig):
    """Fine-tuning with AdamW and a linear decay.

    lr: peak learning rate. epochs: passes over the training split. batch_size: examples per
    optimizer step. weight_decay: AdamW decoupled weight decay.
    """

    lr: float = 5e-4
    epochs: int = 2
    batch_size: int = 16
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.lr <= 1.0:
            raise ConfigError(f"`0 < train.lr <= 1` must hold, but got {self.lr}.")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError(f"`train.epochs >= 1` (an integer) must hold, but got {self.epochs}.")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(
                f"`train.batch_size >= 1` (an integer) must hold, but got {self.batch_size}."
            )
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ConfigError(
                f"`0 <= train.weight_decay <= 1` must hold, but got {self.weight_decay}."
            )


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


def train(model: Any, cfg: TrainConfig, ctx: TrialContext) -> Any:
    import torch

    data = ctx.train_data
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrialFailed("the model has no trainable parameters: check peft.method.")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    gen = torch.Generator().manual_seed(ctx.seed)
    model.train()
    start, step, loss_sum = time.perf_counter(), 0, 0.0
    shown = start
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        epoch_start, epoch_loss = step, 0.0
        for batch, labels in batches(data, cfg.batch_size, order, ctx.device):
            out = model(**batch)
            loss = task_loss(out.logits, labels)
            for term in ctx.loss_terms:
                loss = term(loss, out.logits, batch, labels)
            if not torch.isfinite(loss):
                raise TrialFailed(
                    f"training loss became {loss.item()} at step {step} (epoch {epoch}); "
                    "lower train.lr."
                )
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            value = loss.item()
            loss_sum += value
            epoch_loss += value
            if time.perf_counter() - shown >= PROGRESS_EVERY_S:
                shown = time.perf_counter()
                ctx.log(
                    f"epoch {epoch + 1}/{cfg.epochs} step {step - epoch_start}/{steps_per_epoch}"
                    f" loss {epoch_loss / (step - epoch_start):.4g} ({shown - start:.0f}s)"
                )
        shown = time.perf_counter()
        mean = epoch_loss / max(1, step - epoch_start)
        ctx.log(f"epoch {epoch + 1}/{cfg.epochs} done: loss {mean:.4g} ({shown - start:.1f}s)")
    model.eval()
    ctx.stats["train_time_s"] = time.perf_counter() - start
    ctx.stats["train_loss"] = loss_sum / max(1, step)
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
    },
)
