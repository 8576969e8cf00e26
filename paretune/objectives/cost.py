"""What a model costs: bytes on disk, latency, trainable parameters, training time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

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


class Timing(NamedTuple):
    times: list[float]  # seconds of each timed pass
    mode: str  # "cuda graph": replays of the captured pass; "eager": the pass as Python runs it


def time_model(model: Any, batch: dict[str, Any], device: str, *, warmup: int = 3,
               repeats: int = 20, threads: int | None = None,
               exclusive: bool = True, cuda_graph: bool = True) -> Timing:
    """Seconds of each of ``repeats`` forward passes of ``batch`` after ``warmup`` untimed
    ones. With ``exclusive`` the device's lock is held throughout (``paretune.devicelock``):
    no other process of the node runs a step on it meanwhile. On the CPU, torch runs with
    ``threads`` threads. On a GPU with ``cuda_graph`` the pass is captured once as a CUDA
    graph and its replays are timed (``_graph_times``); without, or where a model cannot be
    captured, each eager pass is timed from its launch to its synchronised end."""
    import contextlib
    import gc

    import torch

    from paretune import devicelock

    cuda = device.startswith("cuda")
    before = torch.get_num_threads()
    if threads and not cuda:
        torch.set_num_threads(threads)
    lock = devicelock.exclusive(device) if exclusive else contextlib.nullcontext()
    gc.collect()
    gc.disable()  # a collection inside a timed pass is noise, not the model's cost
    try:
        with lock, torch.inference_mode():
            n = warmup + repeats
            graphed = _graph_times(model, batch, n) if cuda and cuda_graph else None
            times = graphed if graphed is not None else _eager_times(model, batch, n, cuda)
    finally:
        gc.enable()
        torch.set_num_threads(before)
    return Timing(times[warmup:], "eager" if graphed is None else "cuda graph")


def _eager_times(model: Any, batch: dict[str, Any], n: int, cuda: bool) -> list[float]:
    """Seconds of each of ``n`` passes as Python runs them, from launch to (synchronised)
    end."""
    import torch

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        model(**batch)
        sync()
        times.append(time.perf_counter() - start)
    return times


def _graph_times(model: Any, batch: dict[str, Any], n: int) -> list[float] | None:
    """The GPU's seconds for each of ``n`` replays of the pass captured as a CUDA graph, as
    servers that capture their passes run them (TensorRT, vLLM, torch.compile's
    reduce-overhead): the kernels back to back, timed by CUDA events. The host's Python and
    per-kernel launches are left out: for a small model they are most of an eager pass's
    time, and they vary with the host's CPU and its load, not with the model. None where
    the pass cannot be captured (an operation that waits on the GPU inside it)."""
    import torch

    try:
        side = torch.cuda.Stream()  # capture needs its warm-up on a side stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # allocations and kernel choices, before the capture
                model(**batch)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            model(**batch)
    except Exception:  # noqa: BLE001 - any capture failure: time the eager pass instead
        torch.cuda.synchronize()
        return None
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(n):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del graph
    return times


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
        timing = time_model(
            outcome.model, batch, outcome.device, warmup=int(m.get("latency_warmup", 3)),
            repeats=int(m.get("latency_repeats", 20)), threads=m.get("threads"),
            exclusive=bool(m.get("exclusive", True)), cuda_graph=bool(m.get("cuda_graph", True)),
        )
        outcome.cache["latency"] = spread(timing.times)
        outcome.cache["latency_mode"] = timing.mode
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
