"""One trial, start to end: the contract between the engine and the launchers.

``run_trial`` is top-level and picklable, takes a frozen ``TrialSpec`` and returns a
``TrialResult``; it never raises for a trial's own failure and never touches Optuna.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from paretune.errors import ParetuneError

__all__ = ["TrialResult", "TrialSpec", "run_trial"]


@dataclass(frozen=True)
class TrialSpec:
    """What a launcher needs to run one trial.

    ``params`` holds every knob by its dotted name (searched and fixed alike);
    ``context`` the study-wide settings: model, task, seed, measure, cache_dir, device.
    """

    number: int
    params: Mapping[str, Any]
    context: Mapping[str, Any]


@dataclass
class TrialResult:
    number: int
    state: str  # "complete" | "fail"
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet_libraries() -> None:
    """Per-trial library chatter (weight-loading bars, deprecations) would bury the log."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def run_trial(spec: TrialSpec, artifact_dir: str | None = None) -> TrialResult:
    """Load, apply every active family stage by stage, train, measure. Failures are data.

    With ``artifact_dir`` the shipped model (and its tokenizer) stays there; otherwise it is
    written to a temporary directory, measured, and removed.
    """
    start = time.perf_counter()
    try:
        _quiet_libraries()
        metrics = _run(spec, artifact_dir)
        return TrialResult(spec.number, "complete", metrics, None, time.perf_counter() - start)
    except Exception as exc:  # a trial's failure is recorded, never raised
        if isinstance(exc, ParetuneError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
            if os.environ.get("PARETUNE_DEBUG"):
                reason += "\n" + traceback.format_exc()
        return TrialResult(spec.number, "fail", {}, reason, time.perf_counter() - start)


def build(spec: TrialSpec) -> tuple[Any, Any]:
    """The trial's model after every stage (ARCH ... COMPRESS), and its context."""
    from paretune import data as data_mod
    from paretune import models, spaces
    from paretune.progress import trial_logger

    ctx_in = spec.context
    seed = int(ctx_in["seed"])
    device = pick_device(ctx_in.get("device", "auto"))
    task, model_spec = ctx_in["task"], ctx_in["model"]
    cache_dir = ctx_in.get("cache_dir")

    dataset = data_mod.load_task_data(task, seed)
    causal_lm = task["type"] == "causal_lm"
    model, tokenizer = models.load_base(
        model_spec["name"], len(dataset.label_names), seed, causal_lm=causal_lm
    )
    seed_everything(seed)
    max_length = int(model_spec.get("max_length", 128))
    train, eval_ = (
        data_mod.tokenize(
            tokenizer, texts, labels, max_length, f"{dataset.fingerprint}:{name}", cache_dir,
            prompts=prompts, causal_lm=causal_lm,
        )
        for name, texts, labels, prompts in (
            ("train", dataset.train_texts, dataset.train_labels, dataset.train_prompts),
            ("eval", dataset.eval_texts, dataset.eval_labels, dataset.eval_prompts),
        )
    )
    model.to(device)
    ctx = spaces.TrialContext(
        params=dict(spec.params), device=device, seed=seed, tokenizer=tokenizer,
        train_data=train, eval_data=eval_, task=task, model_spec=model_spec,
        cache_dir=cache_dir or tempfile.gettempdir(), data_fingerprint=dataset.fingerprint,
        log=trial_logger(spec.number, bool(ctx_in.get("progress", False))),
    )
    active = [f for f in spaces.families() if f.is_active(spec.params)]
    for stage in spaces.Stage:
        if stage == spaces.Stage.TRAIN:
            ctx.stats["trainable_params"] = sum(
                p.numel() for p in model.parameters() if p.requires_grad
            )
        for family in active:
            hook = family.hooks.get(stage)
            if hook is not None:
                model = hook(model, family.config(spec.params), ctx)
    model.eval()
    return model, ctx


def write_artifact(model: Any, ctx: Any, directory: str) -> None:
    """Save the model as it ships. A family that changes the format (packed quantized
    weights, say) sets ``ctx.artifact_writer``; the default is safetensors via
    ``save_pretrained``."""
    writer = getattr(ctx, "artifact_writer", None)
    if writer is not None:
        writer(model, directory)
    else:
        model.save_pretrained(directory, safe_serialization=True)


def _run(spec: TrialSpec, artifact_dir: str | None) -> dict[str, float]:
    import torch

    from paretune import objectives

    model, ctx = build(spec)
    keep = artifact_dir is not None
    artifact = artifact_dir or tempfile.mkdtemp(prefix=f"paretune-trial{spec.number}-")
    try:
        write_artifact(model, ctx, artifact)
        outcome = objectives.Outcome(
            model=model, eval_data=ctx.eval_data, artifact_dir=artifact, device=ctx.device,
            task_type=ctx.task["type"], stats=ctx.stats,
            measure=dict(spec.context.get("measure", {})), cache={},
        )
        metrics = {o.name: float(o.fn(outcome)) for o in objectives.objectives(ctx.task["type"])}
        if keep:  # the tokenizer ships with a kept artifact, but is not counted in size_mb
            ctx.tokenizer.save_pretrained(artifact)
    finally:
        if not keep:
            shutil.rmtree(artifact, ignore_errors=True)
    del model
    if ctx.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return metrics
