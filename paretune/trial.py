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
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError, ParetuneError, TrialFailed, TrialStopped

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
    state: str  # "complete" | "fail" | "pruned" (stopped early: ``error`` says why)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    # quality measured while training: [(fraction of training done, value)]
    intermediate: list[tuple[float, float]] = field(default_factory=list)
    # what the metrics were measured on: the saved format, the latency's device and runtime
    notes: dict[str, str] = field(default_factory=dict)


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
    seen: list[tuple[float, float]] = []
    try:
        _quiet_libraries()
        metrics, notes = _run(spec, artifact_dir, seen)
        return TrialResult(spec.number, "complete", metrics, None, time.perf_counter() - start,
                           seen, notes)
    except TrialStopped as exc:
        return TrialResult(spec.number, "pruned", {}, str(exc), time.perf_counter() - start,
                           seen)
    except Exception as exc:  # a trial's failure is recorded, never raised
        if isinstance(exc, ParetuneError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
            if os.environ.get("PARETUNE_DEBUG"):
                reason += "\n" + traceback.format_exc()
        return TrialResult(spec.number, "fail", {}, reason, time.perf_counter() - start)


def build(
    spec: TrialSpec, seen: list[tuple[float, float]] | None = None
) -> tuple[Any, Any]:
    """The trial's model after every stage (ARCH ... COMPRESS), and its context.

    ``seen`` collects the quality measured while training (see ``paretune.stopping``).
    """
    import copy
    import functools

    from paretune import data as data_mod
    from paretune import models, reference, spaces
    from paretune.progress import trial_logger
    from paretune.spaces import _layout

    ctx_in = spec.context
    seed = int(ctx_in["seed"])
    device = pick_device(ctx_in.get("device", "auto"))
    task, model_spec = ctx_in["task"], ctx_in["model"]
    cache_dir = ctx_in.get("cache_dir")

    dataset = data_mod.load_task_data(task, seed)
    causal_lm = task["type"] == "causal_lm"
    num_labels = len(dataset.label_names)
    base, tokenizer = models.warm_base(model_spec["name"], num_labels, seed, causal_lm=causal_lm,
                                       labels=tuple(dataset.label_names))
    objectives = tuple(ctx_in.get("objectives", ()))
    info = _layout.space_info(base.config, task["type"], models.study_device(device), objectives,
                              measure_device=serve_device(ctx_in, device).split(":")[0],
                              tokenizer=_layout.tokenizer_kind(tokenizer,
                                                               int(base.config.vocab_size)))
    active = [f for f in spaces.families() if f.is_active(spec.params)]
    for family in active:  # a guard: the study's space never offers what fails here
        if family.check is not None:
            try:
                family.check(family.config(spec.params), info)
            except ConfigError as exc:
                raise TrialFailed(str(exc)) from None
    seed_everything(seed)
    tokenize = functools.partial(
        data_mod.tokenize_splits, dataset=dataset,
        max_length=int(model_spec.get("max_length", 128)), cache_dir=cache_dir,
        causal_lm=causal_lm,
    )
    train, eval_ = tokenize(tokenizer)
    ctx = spaces.TrialContext(
        params=dict(spec.params), device=device, seed=seed, tokenizer=tokenizer,
        train_data=train, eval_data=eval_, task=task, model_spec=model_spec,
        cache_dir=cache_dir or tempfile.gettempdir(), data_fingerprint=dataset.fingerprint,
        label_names=tuple(dataset.label_names),
        log=trial_logger(spec.number, bool(ctx_in.get("progress", False))), info=info,
        tokenize=tokenize,
    )
    if spec.params.get("train.init") == "finetuned":
        model = reference.load_reference(ctx, num_labels)
    else:
        model = copy.deepcopy(base).to(device)
    for stage in spaces.Stage:
        if stage == spaces.Stage.TRAIN:
            ctx.stats["trainable_params"] = sum(
                p.numel() for p in model.parameters() if p.requires_grad
            )
            rule = ctx_in.get("stop_rule")
            if rule is not None and seen is not None:
                ctx.eval_hooks.append(_stop_hook(rule, model, ctx, seen))
        for family in active:
            hook = family.hooks.get(stage)
            if hook is not None:
                model = hook(model, family.config(spec.params), ctx)
    model.eval()
    return model, ctx


def _stop_hook(rule: Any, model: Any, ctx: Any, seen: list[tuple[float, float]]) -> Any:
    """``hook(model, step, total)``: measure the quality objective on the eval split part-way
    through training; raise TrialStopped if the trial cannot reach the front."""
    from paretune import objectives, stopping
    from paretune.spaces import quant

    costs: dict[str, float] = {}
    if "trainable_params" in rule.costs:
        costs["trainable_params"] = float(ctx.stats["trainable_params"])
    if "size_mb" in rule.costs:  # the structure is final here; only values change in training
        cfg = quant.QuantConfig.from_params("quant", ctx.params)
        costs["size_mb"] = quant.estimated_size_mb(model, cfg)  # type: ignore[arg-type]

    def hook(trained: Any, step: int, total: int) -> None:
        done = step / total
        outcome = objectives.Outcome(
            model=trained, eval_data=ctx.eval_data, artifact_dir="", device=ctx.device,
            task_type=ctx.task["type"], stats=ctx.stats, measure={}, cache={},
        )
        value = float(objectives.get_objective(rule.quality).fn(outcome))
        seen.append((round(done, 4), value))
        ctx.log(f"{rule.quality} {value:.4g} after {done:.0%} of training")
        reason = stopping.stop_reason(rule, value, done, costs, steps=step,
                                      first=len(seen) == 1)
        if reason is not None:
            raise TrialStopped(reason)

    return hook


def serve_device(context: Mapping[str, Any], device: str) -> str:
    """Where the artifact is served and measured: the trial's device, or the CPU where
    ``measure.device`` says so."""
    return "cpu" if dict(context.get("measure") or {}).get("device") == "cpu" else device


def write_artifact(model: Any, ctx: Any, directory: str) -> Any:
    """Save the model as it ships, in the saved format the families named
    (``ctx.saved_format``, or the one the model itself needs: an adapter that cannot merge);
    returns that format. The model is the writer's to change (dtype, device)."""
    from paretune.spaces import _artifact

    fmt = _artifact.choose(model, ctx.saved_format)
    data = ctx.eval_data
    width = int(data.attention_mask[:2].sum(dim=1).max())
    request = _artifact.SaveRequest(
        format=ctx.saved_format, task_type=ctx.task["type"], options=dict(ctx.save_options),
        example={"input_ids": data.input_ids[:2, :width],
                 "attention_mask": data.attention_mask[:2, :width]},
        device=ctx.info.measure_device if ctx.info is not None else "cpu",
    )
    _artifact.write(model, directory, fmt, request)
    return fmt


def describe_device(device: str, threads: int | None = None) -> str:
    """``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: AMD EPYC, 2 threads``."""
    import platform

    import torch

    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {name}, {threads or torch.get_num_threads()} threads"


def _run(
    spec: TrialSpec, artifact_dir: str | None, seen: list[tuple[float, float]]
) -> tuple[dict[str, float], dict[str, str]]:
    import torch

    from paretune import objectives

    model, ctx = build(spec, seen)
    keep = artifact_dir is not None
    artifact = artifact_dir or tempfile.mkdtemp(prefix=f"paretune-trial{spec.number}-")
    measure = dict(spec.context.get("measure", {}))
    device = serve_device(spec.context, ctx.device)
    try:
        fmt = write_artifact(model, ctx, artifact)
        del model  # measured from here on: the artifact as its runtime loads it
        if ctx.device.startswith("cuda"):
            torch.cuda.empty_cache()
        shipped = fmt.load(Path(artifact), device, measure.get("threads"))
        outcome = objectives.Outcome(
            model=shipped, eval_data=ctx.eval_data, artifact_dir=artifact, device=device,
            task_type=ctx.task["type"], stats=ctx.stats, measure=measure, cache={},
        )
        metrics = {o.name: float(o.fn(outcome)) for o in objectives.objectives(ctx.task["type"])}
        notes = {
            "saved_format": fmt.name,
            "latency_device": describe_device(device, measure.get("threads")),
            "latency_runtime": fmt.runtime(),
            "latency_lock": "exclusive" if measure.get("exclusive", True) else "off",
            "latency_mode": outcome.cache.get("latency_mode", "eager"),
            **ctx.notes,
        }
        if keep:  # the tokenizer ships with a kept artifact, but is not counted in size_mb
            ctx.tokenizer.save_pretrained(artifact)
    finally:
        if not keep:
            shutil.rmtree(artifact, ignore_errors=True)
    del shipped
    if ctx.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return metrics, notes
