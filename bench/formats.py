"""Every quantization format, as it ships: size, accuracy and latency of MiniLM on BANKING77.

A benchmark, not a test. The study's reference (MiniLM fully fine-tuned on the task, trained
once and cached) is compressed as it is (``train.init: finetuned``, ``train.epochs: 0``)
into each format the space offers where latency is measured, through ``run_trial``: the
artifact is written in its saved format, loaded back by its own runtime (transformers,
ONNX Runtime, torchao, bitsandbytes) and measured there exactly as a trial is. One table
per measure device; ``auto`` is where trials run (the GPU on a GPU machine), ``cpu`` serves
on the CPU (training still runs on the GPU where there is one).

    # on a GPU machine (real MiniLM weights from $PARETUNE_DEVICE_MINILM)
    python bench/formats.py --data /path/to/banking77 --devices auto,cpu
    # this CPU box, the real MiniLM (alias `minilm`), every eval row
    python bench/formats.py --model minilm --devices cpu
    # a plumbing check: tiny model, few rows (seconds)
    python bench/formats.py --quick

``--all`` adds the formats the space leaves out when latency is an objective (fp16, and
bf16 without fast CPU kernels), to show why.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_model(kind: str, tmp: Path, train_csv: Path) -> str:
    """A saved model folder; ``random`` is a random-init model of MiniLM's shape, ``tiny``
    a tiny one (word-level tokenizers from the training texts)."""
    if kind not in ("random", "tiny"):
        return kind
    from paretune.models import make_tiny_model

    with train_csv.open(newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    shape = (dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
             if kind == "random" else dict(hidden_size=128, intermediate_size=256))
    return make_tiny_model(tmp / f"{kind}-model", texts, **shape)


def label_column(train_csv: Path) -> str:
    with train_csv.open(newline="") as fh:
        header = next(csv.reader(fh))
    return "label" if "label" in header else "category"


def config(args: argparse.Namespace, model: str, device: str, cache: Path,
           objectives: dict[str, str]) -> Any:
    from paretune.search import parse_config

    data = Path(args.data)
    raw = {
        "study": {"cache_dir": str(cache), "objectives": objectives},
        "model": {"name": model, "max_length": args.max_length},
        "task": {"dataset": str(data / "train.csv"), "eval_split": str(data / "test.csv"),
                 "text_column": "text", "label_column": label_column(data / "train.csv"),
                 "max_train_rows": args.max_train_rows, "max_eval_rows": args.max_eval_rows},
        "measure": {"latency_batch_size": args.batch_size, "latency_warmup": args.warmup,
                    "latency_repeats": args.repeats, "device": device,
                    "threads": args.threads},
    }
    return parse_config(raw)


def run_device(args: argparse.Namespace, model: str, device: str, cache: Path,
               out: Path) -> list[dict[str, Any]]:
    from paretune.trial import TrialSpec, run_trial

    latency = {"accuracy": "maximize", "latency_ms": "minimize"}
    cfg = config(args, model, device, cache, latency)
    formats = list(cfg.space["quant.format"].choices)
    if args.all:
        size_only = config(args, model, device, cache, {"accuracy": "maximize",
                                                        "size_mb": "minimize"})
        formats += [f for f in size_only.space["quant.format"].choices if f not in formats]
    if args.formats:
        formats = [f for f in args.formats.split(",") if f in formats]
    rows = []
    for fmt in formats:
        params = {"train.init": "finetuned", "train.epochs": 0, "peft.method": "none",
                  "train.batch_size": 32, "quant.format": fmt}
        start = time.perf_counter()
        result = run_trial(TrialSpec(0, params, cfg.context()),
                           artifact_dir=str(out / f"{device}-{fmt}"))
        row = {"device": device, "format": fmt, "state": result.state, "error": result.error,
               "seconds": round(time.perf_counter() - start, 1), **result.metrics,
               **result.notes, "offered_for_latency": fmt in cfg.space["quant.format"].choices}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of one device's rows, latency relative to fp32's."""
    base = next((r for r in rows if r["format"] == "fp32" and r["state"] == "complete"), None)
    lines = ["| format | saved as | runtime | size MB | accuracy | latency ms (median) | "
             "IQR ms | vs fp32 |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["state"] != "complete":
            lines.append(f"| {r['format']} | failed: {r['error']} | | | | | | |")
            continue
        speed = (f"{base['latency_ms'] / r['latency_ms']:.2f}x" if base else "-")
        mark = "" if r["offered_for_latency"] else " (not offered with latency)"
        runtime = r["latency_runtime"].split(" (")[0].split(",")[0]
        lines.append(
            f"| {r['format']}{mark} | {r['saved_format']} | {runtime} | {r['size_mb']:.1f} | "
            f"{r['accuracy']:.4f} | {r['latency_ms']:.2f} | {r['latency_ms_iqr']:.2f} | "
            f"{speed} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("PARETUNE_DEVICE_MINILM", "minilm"),
                        help="saved model folder, alias (minilm), 'random' (MiniLM shape) or "
                             "'tiny' (default: $PARETUNE_DEVICE_MINILM, else minilm)")
    parser.add_argument("--data", default="/work/shared/data/banking77",
                        help="folder with train.csv and test.csv (text, label or category)")
    parser.add_argument("--devices", default="auto",
                        help="measure devices, comma-separated: auto (where trials run), cpu")
    parser.add_argument("--formats", default=None, help="only these, comma-separated")
    parser.add_argument("--all", action="store_true",
                        help="also the formats left out when latency is an objective")
    parser.add_argument("--epochs", type=int, default=3, help="the reference's epochs")
    parser.add_argument("--lr", type=float, default=None,
                        help="the reference's learning rate (default: paretune's recipe)")
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--max-eval-rows", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per timed batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads when timing")
    parser.add_argument("--cache", default=None, help="cache_dir (default: a temporary one)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 2000 train / 300 eval rows: a CPU check")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.model, args.epochs, args.lr = "tiny", 8, args.lr or 3e-3
        args.max_train_rows = args.max_train_rows or 2000
        args.max_eval_rows = args.max_eval_rows or 300
        args.repeats, args.warmup = min(args.repeats, 10), min(args.warmup, 2)

    import torch
    import transformers

    from paretune import reference
    from paretune.trial import describe_device, pick_device

    recipe = reference.recipe_for  # the reference's epochs: --epochs
    lr = {"lr": args.lr} if args.lr else {}
    reference.recipe_for = lambda rows, hidden: {**recipe(rows, hidden), "epochs": args.epochs,
                                                 **lr}
    where = pick_device("auto")
    print(f"{datetime.date.today()} {platform.node()}: trials on {describe_device(where)}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}; model "
          f"{args.model}; data {args.data}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="paretune-formats-") as tmp_name:
        tmp = Path(tmp_name)
        cache = Path(args.cache) if args.cache else tmp / "cache"
        model = make_model(args.model, tmp, Path(args.data) / "train.csv")
        for device in args.devices.split(","):
            started = time.perf_counter()
            done = run_device(args, model, device, cache, tmp)
            rows += done
            measured = done[0]["latency_device"] if done and "latency_device" in done[0] else ""
            print(f"\n## measure.device {device}: {measured} "
                  f"({time.perf_counter() - started:.0f} s)\n\n{table(done)}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
