"""Trial start in a worker: cold (fresh process) against warm (the worker's next trial).

A benchmark, not a test. "Trial start" is everything a trial does before it trains: the
imports, reading and splitting the task data, loading the base model, tokenizing both
splits; the same calls ``paretune.trial.build`` makes. It is timed inside worker
processes of the multiprocess launcher (the Ray launcher's actors keep the same
per-process caches):

  cold           first trial of a fresh worker, empty tokenized-data cache on disk
  cold, disk     first trial of a fresh worker (a replaced one), tokenized data on disk
  warm           the next trials of the same worker

    python bench/warm_start.py --data /work/shared/data/banking77          # MiniLM shape
    python bench/warm_start.py --data DIR --model /path/to/all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def trial_start(spec: Any) -> Any:
    """Time the part of a trial before training; the same calls as ``trial.build``."""
    start = time.perf_counter()
    from paretune import data as data_mod
    from paretune import models
    from paretune.trial import TrialResult

    ctx = spec.context
    imported = time.perf_counter()
    dataset = data_mod.load_task_data(ctx["task"], ctx["seed"])
    model, tokenizer = models.load_base(ctx["model"]["name"], len(dataset.label_names),
                                        ctx["seed"])
    loaded = time.perf_counter()
    for split in ("train", "eval"):
        data_mod.tokenize(
            tokenizer, getattr(dataset, f"{split}_texts"), getattr(dataset, f"{split}_labels"),
            ctx["model"]["max_length"], f"{dataset.fingerprint}:{split}", ctx["cache_dir"],
        )
    ready = time.perf_counter()
    return TrialResult(spec.number, "complete", {
        "imports_s": imported - start, "data_and_model_s": loaded - imported,
        "tokenize_s": ready - loaded, "ready_s": ready - start,
        "pid": float(os.getpid()),
    })


def minilm_shaped(path: Path, train_csv: Path, text_column: str) -> str:
    from paretune.models import make_tiny_model

    with train_csv.open(newline="") as fh:
        texts = [row[text_column] for row in csv.DictReader(fh)]
    return make_tiny_model(path, texts, hidden_size=384, num_layers=6, num_heads=12,
                           intermediate_size=1536)


def run(kind: str, context: dict[str, Any], n: int) -> list[dict[str, float]]:
    from paretune.launchers import make_launcher
    from paretune.trial import TrialSpec

    with make_launcher(kind, max_concurrent=1, device="cpu", **(
        {"workers": 1} if kind == "multiprocess" else {}
    )) as launcher:
        out = []
        for number in range(n):
            launcher.submit(trial_start, TrialSpec(number, {}, context))
            (result,) = launcher.wait()
            assert result.state == "complete", result.error
            out.append(result.metrics)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/banking77",
                        help="folder with train.csv and test.csv (columns text, category)")
    parser.add_argument("--model", default=None,
                        help="a saved model folder; default: random-init MiniLM shape")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--warm-trials", type=int, default=3)
    parser.add_argument("--launcher", default="multiprocess", choices=("multiprocess", "ray"))
    args = parser.parse_args()

    data = Path(args.data)
    with tempfile.TemporaryDirectory(prefix="paretune-warm-") as tmp:
        model = args.model or minilm_shaped(Path(tmp) / "minilm-shape", data / "train.csv",
                                            "text")
        context = {
            "task": {"type": "classification", "dataset": str(data / "train.csv"),
                     "text_column": "text", "label_column": "category",
                     "eval_split": str(data / "test.csv"), "max_train_rows": None,
                     "max_eval_rows": None},
            "model": {"name": model, "max_length": args.max_length},
            "seed": 0, "cache_dir": str(Path(tmp) / "cache"), "device": "cpu",
        }
        if args.launcher == "ray":
            import ray

            ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
        first = run(args.launcher, context, 1 + args.warm_trials)
        replaced = run(args.launcher, context, 1)  # a fresh worker; tokenized data on disk
    cold, warm, disk = first[0], first[1:], replaced[0]
    warm_ready = sorted(m["ready_s"] for m in warm)[len(warm) // 2]
    print(f"model {args.model or 'random-init MiniLM shape (384 hidden, 6 layers)'}; "
          f"data {data} ({args.launcher} worker, CPU, {os.cpu_count()} cores)")
    for name, m in (("cold", cold), ("cold, tokenized on disk", disk)):
        print(f"{name:26s} ready in {m['ready_s']:7.3f} s  (imports {m['imports_s']:.2f}, "
              f"data+model {m['data_and_model_s']:.2f}, tokenize {m['tokenize_s']:.2f})")
    each = ", ".join(f"{m['ready_s']:.3f}" for m in warm)
    print(f"{'warm (median)':26s} ready in {warm_ready:7.3f} s  ({each})")
    ratio = warm_ready / cold["ready_s"]
    print(f"warm / cold = {ratio:.4f} (target <= 0.1 -> {'met' if ratio <= 0.1 else 'NOT met'}); "
          f"warm / cold-with-disk-cache = {warm_ready / disk['ready_s']:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
