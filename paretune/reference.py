"""The task-tuned reference: the base model fully fine-tuned on the task, once per study.

It is what compression trials start from (``train.init: finetuned``) and the distillation
teacher. The first process that needs it trains it while holding a file lock in
``cache_dir``; every other process, on this machine or any that shares the directory, waits
on the lock and then loads the saved copy. The key hashes the model (a local directory by its
files: ``models.fingerprint``), the data, the seed, max_length and the recipe, so a changed
task or a model replaced in its directory never reuses a stale reference.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RECIPE", "load_reference", "recipe_for", "reference_path"]

# The plain fine-tune: AdamW with a linear warm-up and decay, enough optimizer steps to
# converge on small and mid-sized tasks (epochs from the split's size, see recipe_for), a
# classifier's new head at 100x the rate of the pretrained weights (MiniLM on BANKING77:
# 0.934 against 0.926, mean of 2 seeds; bench/RESULTS.md).
RECIPE: dict[str, Any] = {
    "lr": 3e-4, "batch_size": 32, "warmup_ratio": 0.1, "weight_decay": 0.01,
    "scheduler": "linear", "target_steps": 1500, "min_epochs": 3, "max_epochs": 6,
    "head_lr_scale": 100.0,
}

_WARM: dict[str, Any] = {}  # per process: key -> the reference model (kept on its device)


def recipe_for(train_rows: int, hidden_size: int) -> dict[str, Any]:
    """The reference's training knobs for a split of ``train_rows`` rows.

    Epochs: about ``target_steps`` optimizer steps, within [min_epochs, max_epochs]. The
    rate: 3e-4 for small encoders (hidden size up to 512, e.g. MiniLM, where it was measured
    best), 1e-4 up to 1024, 5e-5 above (the usual range for base and large models).
    """
    steps = max(1, math.ceil(train_rows / RECIPE["batch_size"]))
    epochs = min(RECIPE["max_epochs"], max(RECIPE["min_epochs"],
                                           math.ceil(RECIPE["target_steps"] / steps)))
    lr = 3e-4 if hidden_size <= 512 else 1e-4 if hidden_size <= 1024 else 5e-5
    return {"lr": lr, "epochs": epochs, "batch_size": RECIPE["batch_size"],
            "warmup_ratio": RECIPE["warmup_ratio"], "weight_decay": RECIPE["weight_decay"],
            "scheduler": RECIPE["scheduler"], "head_lr_scale": RECIPE["head_lr_scale"]}


def _key(ctx: Any, recipe: dict[str, Any]) -> str:
    from paretune.models import fingerprint

    name = ctx.model_spec["name"]
    parts = [name, fingerprint(name), ctx.data_fingerprint, ctx.seed,
             int(ctx.model_spec.get("max_length", 128)), ctx.task["type"], recipe]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _causal(ctx: Any) -> bool:
    return bool(ctx.task["type"] == "causal_lm")


def reference_path(ctx: Any, num_labels: int) -> Path:
    """The saved reference of this study's task, trained now if no process has yet."""
    from filelock import FileLock

    recipe = recipe_for(len(ctx.train_data), ctx.info.hidden_size)
    path = Path(ctx.cache_dir, "references", _key(ctx, recipe))
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with FileLock(str(path) + ".lock"):
        if (path / "config.json").exists():  # another process trained it while we waited
            return path
        _train(ctx, num_labels, recipe, path)
    return path


def _train(ctx: Any, num_labels: int, recipe: dict[str, Any], path: Path) -> None:
    from paretune import models
    from paretune.spaces.train import TrainConfig, fit, task_head

    model, tokenizer = models.load_base(
        ctx.model_spec["name"], num_labels, ctx.seed, causal_lm=_causal(ctx),
        labels=ctx.label_names,
    )
    # the base's own vocabulary: the trial's splits may be tokenized by a trimmed one
    train = ctx.tokenize(tokenizer)[0] if ctx.tokenize is not None else ctx.train_data
    ctx.log(f"reference: fine-tuning the base once for this study ({recipe['epochs']} epochs "
            f"at lr {recipe['lr']:g}) -> {path}")
    model.to(ctx.device)
    cfg = TrainConfig(precision=ctx.params.get("train.precision", "fp32"), **recipe)
    seconds, loss = fit(model, cfg, train, ctx.device, ctx.seed, log=ctx.log,
                        head=task_head(model, ctx))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        os.replace(tmp, path)  # atomic: a reader sees all of it or nothing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.log(f"reference: trained in {seconds:.0f}s (mean loss {loss:.3f})")


def load_reference(ctx: Any, num_labels: int, *, frozen: bool = False) -> Any:
    """The reference on the trial's device: a fresh trainable copy, or (``frozen``) the
    process's shared, gradient-free instance (the distillation teacher)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = reference_path(ctx, num_labels)
    key = f"{path}:{ctx.device}"
    if key not in _WARM:
        _WARM.clear()  # one reference per study: keep memory flat
        auto = AutoModelForCausalLM if _causal(ctx) else AutoModelForSequenceClassification
        model = auto.from_pretrained(path, dtype=torch.float32)  # type: ignore[attr-defined]
        model.to(ctx.device).eval()
        for p in model.parameters():
            p.requires_grad = False
        _WARM[key] = model
    if frozen:
        return _WARM[key]
    fresh = copy.deepcopy(_WARM[key])
    for p in fresh.parameters():
        p.requires_grad = True
    return fresh
