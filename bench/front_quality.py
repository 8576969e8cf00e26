"""How good is the front the search finds? MiniLM on BANKING77, the default space, 60 trials.

A benchmark, not a test: run it on a GPU machine. Each configuration is one fresh study with
the same budget, the same data and the same model, its own cache (so each trains its own
reference), and the default space (no `space` section):

  default   paretune as shipped: TPE, anchors first, train.init pretrained | finetuned
  random    random search: the random sampler, no anchors, no start from the finetuned
            reference (study.anchors: false, train.init: pretrained)
  plain     TPE without the anchors and the finetuned start: what they add to the sampler
  anchors   the anchors alone (a study of as many trials as there are anchors)

For each it prints the front, and: the hypervolume against one fixed reference point
(accuracy 0, size_mb 91: the fp32 MiniLM artifact is 90.99 MB, so nothing larger counts),
the best accuracy, the best accuracy at <= 13 / 7.5 / 4.5 MB, trials failed / stopped /
drawn again (twins: recorded, not run) / completed at chance, wall time and GPU. Each
configuration's result is a JSON line (also appended to --out) as soon as it ends;
--report prints the comparison of saved results.

    # on the GPU machine: real MiniLM weights ($PARETUNE_DEVICE_MINILM from device-pack
    # --model minilm) and BANKING77 (train.csv / test.csv, columns text,category)
    python bench/front_quality.py --data DIR --configs default,anchors --out r.jsonl
    python bench/front_quality.py --data DIR --configs random,plain --out r.jsonl
    python bench/front_quality.py --report r.jsonl
    # a run cut short: its study database (--storage-dir) still holds every finished trial;
    # a default study's summary also gives its enqueued anchors alone (anchors-of-default)
    python bench/front_quality.py --data DIR --summarize default=DIR/front-default.db
    # plumbing check on a CPU box: tiny model, few rows
    python bench/front_quality.py --model tiny --data DIR --trials 6 --max-train-rows 300 \\
        --workers 2 --configs default,anchors
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

CONFIGS = ("default", "random", "plain", "anchors")
REFERENCE = {"accuracy": 0.0, "size_mb": 91.0}
BUDGETS_MB = (13.0, 7.5, 4.5)
SUMMARIZED = "not recorded: summarized from the study database (see the run's own line)"


def study_config(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    data = Path(args.data)
    raw: dict[str, Any] = {
        "study": {
            "name": f"front-{name}",
            "storage": f"sqlite:///{Path(args.storage_dir or root) / f'front-{name}.db'}",
            "sampler": "random" if name == "random" else "tpe", "n_trials": args.trials,
            "seed": args.seed, "objectives": {"accuracy": "maximize", "size_mb": "minimize"},
            "reference_point": REFERENCE, "cache_dir": str(root / "cache"),
            "timeout": args.timeout,
        },
        "model": {"name": args.model, "max_length": args.max_length},
        "task": {"dataset": str(data / "train.csv"), "eval_split": str(data / "test.csv"),
                 "label_column": "category", "max_train_rows": args.max_train_rows},
        "launcher": {"type": "multiprocess", "workers": args.workers},
        "measure": {"device": args.measure_device},
    }
    if name in ("random", "plain"):
        raw["study"]["anchors"] = False
        raw["space"] = {"train.init": "pretrained"}
    return raw


def run_config(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from paretune.search import parse_config, run_study
    from paretune.search._engine import _anchors_for, _task_data

    # with --workdir, a re-run of the same configuration resumes its study on its cache
    root = (Path(args.workdir) / f"front-{name}" if args.workdir
            else Path(tempfile.mkdtemp(prefix=f"front-{name}-")))
    root.mkdir(parents=True, exist_ok=True)
    if args.storage_dir:
        Path(args.storage_dir).mkdir(parents=True, exist_ok=True)
    raw = study_config(name, args, root)
    cfg = parse_config(raw)
    dataset = _task_data(cfg)
    if name == "anchors":
        n = len(_anchors_for(cfg, dataset))
        cfg = parse_config({**raw, "study": {**raw["study"], "n_trials": n}})
    start = time.perf_counter()
    study = run_study(cfg, quiet=args.quiet)
    wall = time.perf_counter() - start
    return [summarize(name, study, dataset, wall), *anchor_rows(name, study, dataset)]


def anchor_rows(name: str, study: Any, dataset: Any,
                gpu: str | None = None) -> list[dict[str, Any]]:
    """A default study's enqueued first trials summarized alone ("anchors-of-default"):
    the anchors' front, at no extra GPU time (the `anchors` configuration trains them in a
    study of their own)."""
    seeded = [t for t in study.trials if "fixed_params" in t.system_attrs]
    if name != "default" or not seeded:
        return []
    end = max(t.datetime_complete or t.datetime_start for t in seeded)
    wall = (end - min(t.datetime_start for t in seeded)).total_seconds()
    return [summarize("anchors-of-default", study, dataset, wall, trials=seeded, gpu=gpu)]


def summarize(name: str, study: Any, dataset: Any, wall: float,
              trials: list[Any] | None = None, gpu: str | None = None) -> dict[str, Any]:
    """The result line of a study, or of ``trials`` of it (say, its anchors alone)."""
    import optuna

    from paretune.search._engine import LOST
    from paretune.search._front import pareto_front
    from paretune.search._hypervolume import hypervolume

    labels = dataset.eval_labels
    chance = max(labels.count(c) for c in set(labels)) / len(labels)
    at_chance = chance + 0.05 * (1 - chance)
    state = optuna.trial.TrialState
    trials = study.trials if trials is None else trials
    done = [t for t in trials if t.state == state.COMPLETE]
    failed = [t for t in trials if t.state == state.FAIL
              and not str(t.user_attrs.get("error", "")).startswith(LOST)]
    front = sorted(pareto_front(
        done, ["maximize", "minimize"],
        key=lambda t: [t.user_attrs["accuracy"], t.user_attrs["size_mb"]]),
        key=lambda t: t.user_attrs["size_mb"])
    points = [[t.user_attrs["accuracy"], t.user_attrs["size_mb"]] for t in front]
    hv = hypervolume(points, ["maximize", "minimize"], [REFERENCE["accuracy"],
                                                        REFERENCE["size_mb"]])
    best_at = {
        f"best_accuracy_at_{mb:g}mb": max(
            (t.user_attrs["accuracy"] for t in done if t.user_attrs["size_mb"] <= mb),
            default=None)
        for mb in BUDGETS_MB
    }
    return {
        "config": name, "gpu": gpu or _gpu(), "trials": len(trials), "complete": len(done),
        "failed": len(failed), "fail_reasons": sorted({
            str(t.user_attrs.get("error"))[:120] for t in failed}),
        # cancelled by a stopped run (SIGTERM at a time limit) and re-run on resume
        "cancelled": sum(t.state == state.FAIL for t in trials) - len(failed),
        "stopped": sum(t.state == state.PRUNED and "duplicate_of" not in t.user_attrs
                       for t in trials),
        # drawn with the knobs of an earlier trial: recorded, not run (no GPU time)
        "twins": sum("duplicate_of" in t.user_attrs for t in trials),
        "at_chance": sum(t.user_attrs["accuracy"] <= at_chance for t in done),
        "wall_s": round(wall, 1), "hypervolume": round(hv, 4),
        "reference_point": REFERENCE, "chance": round(chance, 4),
        "eval_rows": len(labels), "eval_origin": dataset.eval_origin,
        "best_accuracy": max((t.user_attrs["accuracy"] for t in done), default=None),
        **best_at,
        "front": [
            {"trial": t.number, "accuracy": round(t.user_attrs["accuracy"], 4),
             "size_mb": round(t.user_attrs["size_mb"], 3),
             "latency_ms": round(t.user_attrs.get("latency_ms", float("nan")), 2),
             "params": _effective(t.user_attrs.get("params", t.params))}
            for t in front
        ],
    }


def _effective(params: dict[str, Any]) -> str:
    """The knobs that make the point what it is (families that are off left out)."""
    skip = {"train.weight_decay", "train.warmup_ratio", "train.scheduler", "train.precision",
            "train.batch_size", "arch.layer_selection"}
    shown = []
    for k, v in params.items():
        if k in skip or (k == "prune.ratio" and v == 0) or (k == "distill.enabled" and not v):
            continue
        shown.append(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else
                     f"{k.split('.', 1)[1]}={v}")
    return " ".join(shown)


def _gpu() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU ({os.cpu_count()} cores)"


def report(rows: list[dict[str, Any]]) -> str:
    by = {r["config"]: r for r in rows}
    lines = ["| config | trials | failed | stopped | twins | at chance | best acc "
             "| best acc <= 13 MB | <= 7.5 MB | <= 4.5 MB | hypervolume | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['trials']} | {r['failed']} | {r['stopped']} | "
            f"{r.get('twins', 0)} | "
            f"{r['at_chance']} | {fmt(r['best_accuracy'])} | {fmt(r['best_accuracy_at_13mb'])}"
            f" | {fmt(r['best_accuracy_at_7.5mb'])} | {fmt(r['best_accuracy_at_4.5mb'])} | "
            f"{r['hypervolume']:.3f} | {r['wall_s']:.0f} |")
    if "default" in by:
        d = by["default"]
        lines.append("")
        for other in ("random", "plain", "anchors", "anchors-of-default"):
            if other in by and by[other]["hypervolume"] > 0:
                lines.append(f"hypervolume default / {other}: "
                             f"{d['hypervolume'] / by[other]['hypervolume']:.3f}")
    for r in rows:
        lines.append(f"\nfront of {r['config']} ({r['gpu']}):")
        lines += [f"  trial {p['trial']}: accuracy {p['accuracy']:.4f}, {p['size_mb']:.2f} MB, "
                  f"{p['latency_ms']} ms | {p['params']}" for p in r["front"]]
        if r["fail_reasons"]:
            lines.append(f"  failed: {r['fail_reasons']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder with train.csv and test.csv (BANKING77)")
    parser.add_argument("--model", default=os.environ.get("PARETUNE_DEVICE_MINILM", "minilm"),
                        help="model alias or folder, or 'tiny' (a random-init tiny BERT)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--workers", type=int, default=8, help="multiprocess workers")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None,
                        help="study.timeout: stop asking after N s; re-run to go on")
    parser.add_argument("--measure-device", default="auto", choices=("auto", "cpu"),
                        help="where artifacts are served and timed (measure.device)")
    parser.add_argument("--workdir", default=None,
                        help="caches (the reference, tokens); a re-run resumes on them")
    parser.add_argument("--storage-dir", default=None, help="where the study databases go")
    parser.add_argument("--summarize", nargs="*", metavar="CONFIG=DB",
                        help="the result line of a study database (of a run cut short)")
    parser.add_argument("--out", default=None, help="append each result's JSON line here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--report", nargs="*", help="print the comparison of saved results")
    args = parser.parse_args()
    if args.report:
        rows = [json.loads(line) for path in args.report for line in Path(path).read_text()
                .splitlines() if line.strip()]
        print(report(rows))
        return 0
    if not args.data:
        parser.error("--data is required to run configurations")
    if args.model == "tiny":
        import csv

        from paretune.models import make_tiny_model

        with open(Path(args.data) / "train.csv", newline="") as fh:
            texts = [r["text"] for r in csv.DictReader(fh)][:2000]
        args.model = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", texts, num_layers=6)
    if args.summarize:
        import optuna

        from paretune.search import parse_config
        from paretune.search._engine import _task_data

        for item in args.summarize:
            name, _, db = item.partition("=")
            cfg = parse_config(study_config(name, args, Path(tempfile.mkdtemp())))
            study = optuna.load_study(study_name=f"front-{name}", storage=f"sqlite:///{db}")
            times = [t.datetime_complete for t in study.trials if t.datetime_complete]
            wall = (max(times) - min(t.datetime_start for t in study.trials)).total_seconds()
            dataset = _task_data(cfg)
            rows = [summarize(name, study, dataset, wall, gpu=SUMMARIZED),
                    *anchor_rows(name, study, dataset, gpu=SUMMARIZED)]
            for row in rows:
                print(json.dumps(row))
        return 0
    rows = []
    for name in args.configs.split(","):
        for row in run_config(name, args):
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
    print(report(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
