"""What learning rates and epochs each way of training needs: the measurements behind the
default ranges of train.lr and train.epochs (docs/knobs.md).

A benchmark, not a test: run it on a GPU machine. One grid study per way of training, MiniLM
on BANKING77 (all 10,003 training rows, the 3,080 test rows as the eval split, max_length
64, batch 32, warm-up 0.1, weight decay 0.01), each point trained for --epochs epochs with
its accuracy measured after every epoch (the early-stopping evaluations; only a trial near
chance after its first epoch is stopped, and is shown as such). Then the recovery of a
3-layer copy of the finetuned reference, with and without distillation.

    python bench/calibrate.py --data DIR --out calib.jsonl      # ~6 minutes on one H100
    python bench/calibrate.py --report calib.jsonl
    python bench/calibrate.py --model tiny --data DIR --max-train-rows 300 --only none,lora
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FRESH = {  # way of training -> (fixed knobs, learning rates to try)
    "none": ({}, [3e-5, 1e-4, 3e-4, 1e-3]),
    "lora": ({"lora.r": 16, "lora.alpha": 32, "lora.targets": "attention"},
             [3e-4, 1e-3, 3e-3, 1e-2]),
    "dora": ({"lora.r": 16, "lora.alpha": 32, "lora.targets": "attention"}, [1e-3, 3e-3]),
    "adalora": ({"adalora.ranks": "12/4", "adalora.targets": "attention"},
                [1e-3, 3e-3, 1e-2]),
    "ia3": ({}, [3e-3, 1e-2, 3e-2, 1e-1]),
    "head": ({}, [3e-3, 1e-2, 3e-2, 1e-1]),
    "prefix": ({"prompt.virtual_tokens": 10}, [3e-3, 1e-2, 3e-2]),
    "ptuning": ({"prompt.virtual_tokens": 10}, [3e-3, 1e-2, 3e-2]),
}
# the reference's recipe: a full fine-tune at 3e-4, its new head at lr x head_lr_scale
REFERENCE = {"train.lr": [3e-4], "train.head_lr_scale": [1.0, 10.0, 30.0, 100.0],
             "train.epochs": [5, 8]}
# LoRA's scale: alpha / r of 1, 2 and 4 in the top half of its rate range, batch 16
LORA_SCALE = {"lora.r": 8, "lora.alpha": [8, 16, 32], "lora.targets": "attention",
              "train.lr": [1.5e-3, 2e-3], "train.batch_size": 16}
RECOVER = {  # from the finetuned reference, 3 of 6 layers
    "none": [1e-5, 3e-5, 1e-4, 3e-4],
    "lora": [1e-4, 3e-4, 1e-3],
}
BASE = {"train.batch_size": 32, "train.weight_decay": 0.01, "train.warmup_ratio": 0.1,
        "vocab.keep": "all",
        "train.scheduler": "linear", "prune.ratio": 0.0, "quant.format": "fp32"}


def raw_config(name: str, space: dict[str, Any], args: argparse.Namespace,
               root: Path, seed: int = 0) -> dict[str, Any]:
    data = Path(args.data)
    return {
        "study": {"name": f"{name}-s{seed}", "storage": f"sqlite:///{root / 'calib.db'}",
                  "sampler": "grid", "seed": seed,
                  "n_trials": 100, "anchors": False, "cache_dir": str(root / "cache"),
                  # latency is not known before training: only the near-chance rule stops
                  "objectives": {"accuracy": "maximize", "latency_ms": "minimize"}},
        "model": {"name": args.model, "max_length": 64},
        "task": {"dataset": str(data / "train.csv"), "eval_split": str(data / "test.csv"),
                 "label_column": "category", "max_train_rows": args.max_train_rows},
        "launcher": {"type": "multiprocess", "workers": args.workers},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
        "space": {**BASE, **space},
    }


ORDER = ("reference", "lora-scale", "fresh-none", "fresh-lora", "recover-none",  # most
         "fresh-head", "fresh-ia3", "recover-lora", "fresh-prefix", "fresh-ptuning",  # telling
         "fresh-dora", "fresh-adalora")  # first


def studies(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    only = set(args.only.split(",")) if args.only else None
    out = []
    if only is None or "reference" in only:
        out.append(("reference", {"train.init": "pretrained", "peft.method": "none",
                                  "arch.n_layers": 0, "distill.enabled": False, **REFERENCE}))
    if only is None or "lora-scale" in only:
        out.append(("lora-scale", {"train.init": "pretrained", "peft.method": "lora",
                                   "train.epochs": args.epochs, "arch.n_layers": 0,
                                   "distill.enabled": False, "lora.dropout": 0.0,
                                   **LORA_SCALE}))
    for method, (fixed, rates) in FRESH.items():
        if only is None or method in only:
            out.append((f"fresh-{method}", {
                "train.init": "pretrained", "peft.method": method, "train.lr": rates,
                "train.epochs": args.epochs, "arch.n_layers": 0, "distill.enabled": False,
                **fixed}))
    for method, rates in RECOVER.items():
        if only is None or f"recover-{method}" in only:
            out.append((f"recover-{method}", {
                "train.init": "finetuned", "peft.method": method, "train.lr": rates,
                "train.epochs": 3, "arch.n_layers": 3, "arch.layer_selection": "first",
                "distill.enabled": [False, True], "distill.alpha": 0.5,
                "distill.temperature": 2.0, **({"lora.r": 16, "lora.alpha": 32,
                                                 "lora.targets": "attention"}
                                                if method == "lora" else {})}))
    return sorted(out, key=lambda item: ORDER.index(item[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--model", default=os.environ.get("PARETUNE_DEVICE_MINILM", "minilm"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--only", default=None,
                        help="comma list: reference,lora-scale,none,lora,...,recover-none")
    parser.add_argument("--seed", type=int, default=0, help="study.seed (init and shuffling)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", nargs="*")
    args = parser.parse_args()
    if args.report:
        rows = [json.loads(x) for p in args.report for x in Path(p).read_text().splitlines()
                if x.strip()]
        print(report(rows))
        return 0
    from paretune.search import parse_config, run_study

    if args.model == "tiny":
        from paretune.models import make_tiny_model

        args.model = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", [], num_layers=6)
    root = Path(tempfile.mkdtemp(prefix="calib-"))
    seed = args.seed
    for name, space in studies(args):
        start = time.perf_counter()
        study = run_study(parse_config(raw_config(name, space, args, root, seed)), quiet=True)
        for t in study.trials:
            p = t.user_attrs.get("params", t.params)
            row = {"study": name, "seed": seed, "lr": p.get("train.lr"),
                   "head": p.get("train.head_lr_scale"), "epochs": p.get("train.epochs"),
                   "lora": f"{p['lora.r']}/{p['lora.alpha']}" if "lora.r" in p else None,
                   "distill": p.get("distill.enabled"),
                   "state": t.state.name, "curve": t.user_attrs.get("intermediate", []),
                   "accuracy": t.user_attrs.get("accuracy"),
                   "train_time_s": t.user_attrs.get("train_time_s"),
                   "stopped": t.user_attrs.get("stopped"), "error": t.user_attrs.get("error")}
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
        print(f"# {name} (seed {seed}): {time.perf_counter() - start:.0f}s", file=sys.stderr,
              flush=True)
    return 0


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["| study | seed | lr | head x | lora r/alpha | epochs | distill "
             "| accuracy after each epoch | final | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["study"], r["lr"] or 0, r.get("head") or 1, r.get("lora") or "",
                r.get("epochs") or 0,
                bool(r["distill"]), r.get("seed", 0))
    for r in sorted(rows, key=order):
        curve = " ".join(f"{v:.3f}" for _, v in r["curve"])
        final = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else r["state"].lower()
        t = f"{r['train_time_s']:.0f}" if r.get("train_time_s") else "-"
        lines.append(f"| {r['study']} | {r.get('seed', 0)} | {r['lr']:g} | {r.get('head') or 1:g}"
                     f" | {r.get('lora') or '-'} | {r.get('epochs') or '-'} | {r['distill']}"
                     f" | {curve} | {final} | {t} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
