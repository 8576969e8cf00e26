"""What a model costs: bytes on disk, latency, trainable parameters, training time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from paretune.objectives._registry import Outcome, register_objective

ALL_TASKS = ("classification", "causal_lm")


@register_objective("size_mb", "minimize", tasks=ALL_TASKS)
def size_mb(outcome: Outcome) -> float:
    """Bytes of the saved artifact (weights + config, as written to disk), in MB (10^6)."""
    files = [p for p in Path(outcome.artifact_dir).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


@register_objective("latency_ms", "minimize", tasks=ALL_TASKS)
def latency_ms(outcome: Outcome) -> float:
    """Median wall time of one eval batch after warm-up, on the trial's device."""
    import torch

    data = outcome.eval_data
    n = min(len(data), int(outcome.measure.get("latency_batch_size", 16)))
    mask = data.attention_mask[:n]
    width = int(mask.sum(dim=1).max())
    batch = {
        "input_ids": data.input_ids[:n, :width].to(outcome.device),
        "attention_mask": mask[:, :width].to(outcome.device),
    }
    sync = torch.cuda.synchronize if outcome.device.startswith("cuda") else (lambda: None)
    warmup = int(outcome.measure.get("latency_warmup", 2))
    repeats = int(outcome.measure.get("latency_repeats", 10))
    times = []
    with torch.inference_mode():
        for _ in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            outcome.model(**batch)
            sync()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times[warmup:])


@register_objective("trainable_params", "minimize", tasks=ALL_TASKS)
def trainable_params(outcome: Outcome) -> float:
    """Parameters that received gradients during training (peft's own count for adapters)."""
    return float(outcome.stats["trainable_params"])


@register_objective("train_time_s", "minimize", tasks=ALL_TASKS)
def train_time_s(outcome: Outcome) -> float:
    """Wall time of the training loop alone (no loading, no measuring)."""
    return float(outcome.stats["train_time_s"])
