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
    SpaceInfo,
    Stage,
    Switch,
    TrialContext,
    register_family,
)

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
INITS = ("pretrained", "finetuned")


@dataclass(frozen=True)
class TrainConfig(FamilyConfig):
    """Fine-tuning with AdamW.

    init: start from the `pretrained` base, or from the `finetuned` reference (the base fully
    fine-tuned on the task once per study, see ``paretune.reference``) and recover from
    compression with short training (0 epochs: compress the reference as it is).
    lr: peak learning rate. epochs: passes over the training split. batch_size: examples per
    optimizer step. weight_decay: AdamW decoupled weight decay. warmup_ratio: fraction of the
    steps over which the rate rises linearly from 0 to lr. scheduler: decay after warm-up,
    `linear` (to 0), `cosine` (to 0) or `constant`. precision: autocast dtype of forward and
    backward, `fp32`, `bf16` (CPU or a GPU that has it) or `fp16` (CUDA only).
    head_lr_scale: a classifier's new task head (the layers its checkpoint did not hold,
    initialized at random) trains at lr times this; the pretrained weights, and a head the
    checkpoint brings, at lr.
    """

    init: str = "pretrained"
    lr: float = 5e-4
    epochs: int = 2
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    precision: str = "fp32"
    head_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(
                f"train.init must be one of {', '.join(INITS)}, but got {self.init!r}."
            )
        if not 0.0 < self.lr <= 1.0:
            raise ConfigError(f"`0 < train.lr <= 1` must hold, but got {self.lr}.")
        if not (isinstance(self.epochs, int) and self.epochs >= 0):
            raise ConfigError(
                f"`train.epochs >= 0` (an integer) must hold, but got {self.epochs}."
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
        if not 0.0 < self.head_lr_scale <= 1000.0:
            raise ConfigError(
                f"`0 < train.head_lr_scale <= 1000` must hold, but got {self.head_lr_scale}."
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


def param_groups(model: Any, cfg: TrainConfig, head: Any = ()) -> list[dict[str, Any]]:
    """AdamW's parameter groups: the trainable weights at ``cfg.lr``, those of the ``head``
    modules (names of the task model's top-level children) at ``lr * head_lr_scale``."""
    from paretune.spaces import _layout

    fast: set[int] = set()
    if cfg.head_lr_scale != 1.0:
        task_model = _layout.backbone(model)
        fast = {id(p) for name in head for p in task_model.get_submodule(name).parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrialFailed("the model has no trainable parameters: check peft.method.")
    groups = [{"params": [p for p in params if id(p) not in fast], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in fast], "lr": cfg.lr * cfg.head_lr_scale}]
    return [g for g in groups if g["params"]]


def fit(
    model: Any,
    cfg: TrainConfig,
    data: Any,
    device: str,
    seed: int,
    loss_terms: Any = (),
    step_hooks: Any = (),
    log: Any = lambda line: None,
    eval_hooks: Any = (),
    head: Any = (),
) -> tuple[float, float]:
    """Train ``model`` in place on a tokenized split; returns (seconds, mean loss).

    ``loss_terms`` are ``term(loss, logits, batch, labels) -> loss`` (e.g. distillation);
    ``step_hooks`` are called with the step number after each optimizer step (e.g. AdaLoRA's
    rank reallocation, which reads that step's gradients); ``log`` gets progress lines;
    ``eval_hooks`` are called as ``hook(model, steps done, total steps)`` after each epoch but
    the last (the model in eval mode meanwhile). ``head``: the top-level modules of the task
    head, trained at ``lr * head_lr_scale``.
    """
    import torch

    from paretune import devicelock

    dtype = autocast_dtype(cfg.precision, device)
    opt = torch.optim.AdamW(param_groups(model, cfg, head), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_ratio * total)
    checkpoints = {round(total * (e + 1) / cfg.epochs) for e in range(cfg.epochs - 1)}
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
            with devicelock.shared(device):  # a timing on this device waits for it
                kind = device.split(":")[0]
                with torch.autocast(kind, dtype=dtype, enabled=dtype is not None):
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
            if step in checkpoints and eval_hooks:
                model.eval()
                for check in eval_hooks:
                    check(model, step, total)
                model.train()
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
    if cfg.epochs == 0:  # compressed as it is (the finetuned reference, or a pretrained LM)
        ctx.stats["train_time_s"] = 0.0
        ctx.stats["trainable_params"] = 0.0
        return model
    seconds, loss = fit(
        model, cfg, ctx.train_data, ctx.device, ctx.seed, ctx.loss_terms, ctx.step_hooks,
        log=ctx.log, eval_hooks=ctx.eval_hooks, head=task_head(model, ctx),
    )
    ctx.stats["train_time_s"] = seconds
    ctx.stats["train_loss"] = loss
    return model


def task_head(model: Any, ctx: TrialContext) -> list[str]:
    """A classifier's new task head (a causal LM's ``lm_head`` is pretrained: no head)."""
    from paretune.spaces import _layout

    return _layout.new_head_modules(model) if ctx.task["type"] == "classification" else []


def shape(info: SpaceInfo) -> dict[str, Any]:
    """bf16 autocast where the device has it (GPUs since Ampere); fp32 on the CPU, where
    autocast is slower than fp32 for models of this size. One rate where there is no new
    head (a causal LM)."""
    out: dict[str, Any] = {
        "precision": Choice("bf16" if info.device == "cuda" and info.bf16 else "fp32")}
    if info.task_type != "classification":  # a causal LM has no new head
        out["head_lr_scale"] = Choice(1.0)
    return out


def check(cfg: TrainConfig, info: SpaceInfo) -> None:
    if cfg.precision == "fp16" and info.device != "cuda":
        raise ConfigError(
            f"train.precision fp16 needs a CUDA GPU, but trials run on {info.device}; "
            "use bf16 or fp32."
        )
    if cfg.precision == "bf16" and not info.bf16:
        raise ConfigError("train.precision bf16 is not supported by this GPU; use fp16 or fp32.")


def trains(epochs: int) -> bool:
    """The condition of the knobs that only matter when the trial trains (epochs > 0)."""
    return epochs > 0


# Default ranges per way of training, from bench/calibrate.py (docs/knobs.md has the table):
# a full fine-tune peaks near 3e-4, LoRA near 1e-3 (NaN in bf16 at 3e-3), IA3 near 3e-2, the
# head alone near 1e-1; recovering a 3-layer copy of the finetuned reference wants 1e-4..3e-4
# and 2-3 epochs.
_FRESH_LR = {
    "none": Float(1e-4, 6e-4, log=True),
    "lora": Float(5e-4, 2e-3, log=True),
    "dora": Float(5e-4, 2e-3, log=True),
    "adalora": Float(5e-4, 3e-3, log=True),
    "ia3": Float(1e-2, 6e-2, log=True),
    "head": Float(2e-2, 2e-1, log=True),
    "prefix": Float(3e-3, 3e-2, log=True),
    "ptuning": Float(3e-3, 3e-2, log=True),
}
# recovering from the reference: a full fine-tune lower; an adapter at its own scale (an IA3
# vector at LoRA's 1.7e-3 did not move a 1-layer copy off chance in the H200 front run)
_RECOVER_LR = Switch("peft.method", {**_FRESH_LR, "none": Float(1e-4, 5e-4, log=True)},
                     default=Float(5e-4, 2e-3, log=True))
_FRESH_EPOCHS = Switch("peft.method", {"none": Int(3, 6), "head": Int(5, 10)},
                       default=Int(4, 8))
# from the reference, 0 epochs compresses it as it is; an adapter trains at least 1 (an
# untrained one changes nothing but the bytes: LoRA's B is 0, IA3's scales are 1)
_RECOVER_EPOCHS = Switch("peft.method", {"none": Int(0, 3)}, default=Int(1, 3))
_LR = Switch("train.init", {"finetuned": _RECOVER_LR},
             default=Switch("peft.method", _FRESH_LR, default=Float(1e-4, 1e-3, log=True)))

register_family(
    "train",
    TrainConfig,
    train,
    stage=Stage.TRAIN,
    knobs={
        "init": Choice(*INITS),
        "epochs": Switch("train.init", {"finetuned": _RECOVER_EPOCHS}, default=_FRESH_EPOCHS),
        "lr": _LR,
        "batch_size": Choice(16, 32),
        "weight_decay": Choice(0.01),
        "warmup_ratio": Choice(0.1),
        "scheduler": Choice("linear"),
        "precision": Choice("fp32"),
        # a full fine-tune's new head at 100x the body's rate: 0.934 against 0.926 on
        # BANKING77, 2 seeds each (bench/calibrate.py --only reference); adapters, the head
        # alone and the finetuned start (its head trained already) keep one rate
        "head_lr_scale": Choice(100.0),
    },
    # at 0 epochs nothing trains: a rate or batch size drawn there would make the same model
    # a different point for the sampler (the demo drew one twice)
    knob_when={"lr": {"train.epochs": trains}, "batch_size": {"train.epochs": trains},
               "head_lr_scale": {"peft.method": "none", "train.init": "pretrained",
                                 "train.epochs": trains}},
    shape=shape,
    check=check,
)
