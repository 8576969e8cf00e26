"""What a model costs: bytes on disk, latency, trainable parameters, training time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from paretune.objectives._registry import Outcome, register_objective

ALL_TASKS = ("classification", "causal_lm")


@register_objective("size_mb", "minimize", tasks=ALL_TASKS)
def size_mb(outcome: Outcome) -> float:
    """Bytes of the saved artifact (weights + config, as written to disk), in MB (10^6)."""
    files = [p for p in Path(outcome.artifact_dir).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def latency_batch(data: Any, n: int, device: str) -> dict[str, Any]:
    """The first ``n`` rows of a tokenized split, trimmed to their longest row, on ``device``."""
    n = min(len(data), n)
    mask = data.attention_mask[:n]
    width = int(mask.sum(dim=1).max())
    return {"input_ids": data.input_ids[:n, :width].to(device),
            "attention_mask": mask[:, :width].to(device)}


def time_model(model: Any, batch: dict[str, Any], device: str, *, warmup: int = 3,
               repeats: int = 20, threads: int | None = None,
               exclusive: bool = True) -> list[float]:
    """Seconds of each of ``repeats`` forward passes of ``batch`` after ``warmup`` untimed
    ones. With ``exclusive`` the device's lock is held throughout (``paretune.devicelock``):
    no other process of the node runs a step on it meanwhile. CUDA work is synchronised
    before each timer reads; on the CPU, torch runs with ``threads`` threads."""
    import contextlib
    import gc

    import torch

    from paretune import devicelock

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    before = torch.get_num_threads()
    if threads and not cuda:
        torch.set_num_threads(threads)
    lock = devicelock.exclusive(device) if exclusive else contextlib.nullcontext()
    times: list[float] = []
    gc.collect()
    gc.disable()  # a collection inside a timed pass is noise, not the model's cost
    try:
        with lock, torch.inference_mode():
            for _ in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                model(**batch)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        gc.enable()
        torch.set_num_threads(before)
    return times[warmup:]


def spread(times: list[float]) -> tuple[float, float]:
    """(median, interquartile range) of ``times``."""
    if len(times) < 2:
        return statistics.median(times), 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q3 - q1


def _latency(outcome: Outcome) -> tuple[float, float]:
    if "latency" not in outcome.cache:
        m = outcome.measure
        batch = latency_batch(outcome.eval_data, int(m.get("latency_batch_size", 16)),
                              outcome.device)
        times = time_model(
            outcome.model, batch, outcome.device, warmup=int(m.get("latency_warmup", 3)),
            repeats=int(m.get("latency_repeats", 20)), threads=m.get("threads"),
            exclusive=bool(m.get("exclusive", True)),
        )
        outcome.cache["latency"] = spread(times)
    return outcome.cache["latency"]  # type: ignore[no-any-return]


@register_objective("latency_ms", "minimize", tasks=ALL_TASKS)
def latency_ms(outcome: Outcome) -> float:
    """Median time of one eval batch (measure.latency_batch_size rows) after warm-up, run by
    the artifact's own runtime on the measure device, with the device's timing lock held."""
    return 1000.0 * _latency(outcome)[0]


@register_objective("latency_ms_iqr", "minimize", tasks=ALL_TASKS)
def latency_ms_iqr(outcome: Outcome) -> float:
    """Interquartile range of the timed batches of latency_ms: how repeatable it was."""
    return 1000.0 * _latency(outcome)[1]


@register_objective("trainable_params", "minimize", tasks=ALL_TASKS)
def trainable_params(outcome: Outcome) -> float:
    """Parameters that received gradients during training (peft's own count for adapters)."""
    return float(outcome.stats["trainable_params"])


@register_objective("train_time_s", "minimize", tasks=ALL_TASKS)
def train_time_s(outcome: Outcome) -> float:
    """Wall time of the training loop alone (no loading, no measuring)."""
    return float(outcome.stats["train_time_s"])
