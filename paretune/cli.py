"""``paretune`` command line. Imports nothing heavy until a command needs it."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError, ParetuneError

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paretune",
        description="Search the Pareto front of task quality against cost over every way "
        "to compress and fine-tune a language model.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a study config, or replay an exported recipe")
    run.add_argument("config", help="study config (YAML) or recipe exported by `paretune export`")
    run.add_argument("overrides", nargs="*", help="key=value, e.g. study.n_trials=4")

    demo = sub.add_parser("demo", help="small real search: MiniLM on BBC News, offline, on CPU")
    demo.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")

    def storage_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--study", required=True, help="study name")
        q.add_argument("--storage", default="sqlite:///paretune.db", help="Optuna storage URL")

    front = sub.add_parser("front", help="print the Pareto-optimal trials of a study")
    storage_args(front)

    export = sub.add_parser("export", help="write a trial's recipe (YAML) to replay or deploy")
    storage_args(export)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--pick", help="knee (default) or best:METRIC")
    export.add_argument("-o", "--output", required=True, help="recipe file to write")
    return p


def _metrics_of(t: Any, names: Sequence[str]) -> list[str]:
    return [f"{t.user_attrs[n]:.4g}" if n in t.user_attrs else "-" for n in names]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_front(study: Any) -> None:
    from paretune.objectives import objectives
    from paretune.search import front_trials

    front = front_trials(study)
    chosen = list(study.user_attrs.get("paretune.objectives", {}))
    names = chosen + [o.name for o in objectives() if o.name not in chosen]
    names = [n for n in names if any(n in t.user_attrs for t in front)]
    rows = []
    for t in front:
        params = t.user_attrs.get("params", t.params)
        searched = {k: v for k, v in params.items() if k in t.params}
        knobs = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in searched.items()
        )
        rows.append([str(t.number), *_metrics_of(t, names), knobs])
    print(f"Pareto front of study {study.study_name!r}: {len(front)} of "
          f"{len(study.trials)} trials (objectives: {', '.join(chosen)})")
    print(_table(rows, ["trial", *names, "params"]))


def cmd_run(args: argparse.Namespace) -> int:
    from paretune.search import is_recipe, load_config, read_yaml, replay_recipe, run_study

    raw = read_yaml(args.config)
    if is_recipe(raw):
        if args.overrides:
            raise ConfigError("a recipe replays as written; overrides are for study configs.")
        result = replay_recipe(raw)
        if result.state != "complete":
            print(f"replay of trial {raw.get('trial')} FAILED: {result.error}", file=sys.stderr)
            return 1
        print(_table(
            [[k, f"{raw.get('metrics', {}).get(k, float('nan')):.4g}", f"{v:.4g}"]
             for k, v in result.metrics.items()],
            ["metric", "recorded", "replayed"],
        ))
        return 0
    cfg = load_config(raw, args.overrides)
    study = run_study(cfg)
    print_front(study)
    print(f"study {cfg.study.name!r} is stored in {cfg.study.storage}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from paretune.search import load_config, run_study

    cfg = load_config(str(DEMO_CONFIG), args.overrides)
    print(f"paretune demo: {cfg.study.n_trials} trials of all-MiniLM-L6-v2 on BBC News "
          f"({cfg.task.max_train_rows} train / {cfg.task.max_eval_rows} eval articles), on "
          f"{cfg.launcher.device}", file=sys.stderr)
    study = run_study(cfg)
    print_front(study)
    print(f"study {cfg.study.name!r} is stored in {cfg.study.storage}; next: "
          f"paretune front --study {cfg.study.name} --storage {cfg.study.storage}")
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    from paretune.search import load_study

    print_front(load_study(args.study, args.storage))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import yaml

    from paretune.search import load_study, make_recipe, pick_trial

    study = load_study(args.study, args.storage)
    trial = pick_trial(study, trial=args.trial, pick=args.pick)
    recipe = make_recipe(study, trial)
    Path(args.output).write_text(yaml.safe_dump(recipe, sort_keys=False))
    print(f"wrote recipe of trial {trial.number} to {args.output}")
    return 0


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "front": cmd_front, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ParetuneError as exc:
        if os.environ.get("PARETUNE_DEBUG"):
            traceback.print_exc()
        print(f"paretune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paretune: interrupted; completed trials are stored, re-run to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
