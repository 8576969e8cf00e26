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
DEFAULT_STORAGE = "sqlite:///paretune.db"
PLOT_KINDS = ("pareto", "hypervolume", "importance", "history")  # = search._plots.KINDS


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
    quiet_help = "no live status line, per-trial lines or training progress on stderr"
    run.add_argument("-q", "--quiet", action="store_true", help=quiet_help)

    demo = sub.add_parser("demo", help="small real search: MiniLM on BBC News, offline, on CPU")
    demo.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    demo.add_argument("-q", "--quiet", action="store_true", help=quiet_help)

    def storage_args(q: argparse.ArgumentParser, study: bool = True) -> None:
        if study:
            q.add_argument("--study", required=True, help="study name")
        q.add_argument("--storage", default=DEFAULT_STORAGE,
                       help=f"Optuna storage URL (default {DEFAULT_STORAGE})")

    front = sub.add_parser("front", help="print the Pareto-optimal trials of a study")
    storage_args(front)

    export = sub.add_parser("export", help="write a trial's recipe (YAML) to replay or deploy")
    storage_args(export)
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--pick", help="knee (default) or best:METRIC")
    which.add_argument("--front", action="store_true",
                       help="one recipe per Pareto-optimal trial, into the directory -o")
    export.add_argument("-o", "--output", required=True,
                        help="recipe file to write (a directory with --front)")

    plot = sub.add_parser("plot", help="plot a study to .html, .png, .pdf or .svg "
                          "(optuna.visualization; images need no browser)")
    storage_args(plot)
    plot.add_argument("--kind", required=True, choices=PLOT_KINDS,
                      help="pareto: 2-D/3-D front; hypervolume: its recorded history; "
                      "importance: knob importance per objective; history: values per trial")
    plot.add_argument("--target", action="append", default=[], metavar="METRIC",
                      help="plot this metric instead of the objectives (repeat for several)")
    plot.add_argument("-o", "--output", required=True,
                      help="file to write: .html (interactive), .png, .pdf or .svg")

    mat = sub.add_parser("materialize", help="rebuild a recipe's model into a directory that "
                         "loads with transformers, with its tokenizer and a model card")
    mat.add_argument("recipe", help="recipe written by paretune export")
    mat.add_argument("-o", "--output", required=True, help="new or empty directory")
    mat.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto)")
    mat.add_argument("--cache-dir", help="paretune cache (default: the study's cache_dir where it "
                     "exists here, else ~/.cache/paretune)")
    mat.add_argument("-q", "--quiet", action="store_true", help="no training progress")

    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    storage_args(dash, study=False)
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default 127.0.0.1: this machine only)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    return p


def _metrics_of(t: Any, names: Sequence[str]) -> list[str]:
    return [f"{t.user_attrs[n]:.4g}" if n in t.user_attrs else "-" for n in names]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_front(study: Any) -> None:
    from paretune.data import describe_eval
    from paretune.objectives import objectives
    from paretune.search import front_trials
    from paretune.search._summary import effective_params, format_params

    front = front_trials(study)
    chosen = list(study.user_attrs.get("paretune.objectives", {}))
    names = chosen + [o.name for o in objectives() if o.name not in chosen]
    names = [n for n in names if any(n in t.user_attrs for t in front)]
    rows = []
    for t in front:
        settings = effective_params(t.user_attrs.get("params", t.params))
        rows.append([str(t.number), *_metrics_of(t, names), format_params(settings)])
    print(f"Pareto front of study {study.study_name!r}: {len(front)} of "
          f"{len(study.trials)} trials (objectives: {', '.join(chosen)})")
    print(_table(rows, ["trial", *names, "settings (knobs away from their default)"]))
    print(hypervolume_line(study, [t.values for t in front]))
    print(describe_eval(study.user_attrs.get("paretune.context")))


def hypervolume_line(study: Any, front: Sequence[Sequence[float]]) -> str:
    from paretune.search._hypervolume import REFERENCE_KEY, hypervolume, reference_point

    ref = reference_point(study)
    if ref is None or len(study.directions) < 2:
        return "hypervolume: - (needs 2 or more objectives and a completed feasible trial)"
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names or list(study.user_attrs.get("paretune.objectives", {}))
    where = (
        "study.reference_point" if study.user_attrs.get(REFERENCE_KEY) is not None
        else "derived: worst observed value + 10% of the observed range"
    )
    point = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, ref))
    value = hypervolume(front, directions, ref)
    return f"hypervolume: {value:.6g} (reference point {point}; {where})"


def cmd_run(args: argparse.Namespace) -> int:
    from paretune.search import is_recipe, load_config, read_yaml, run_study

    raw = read_yaml(args.config)
    if is_recipe(raw):
        if args.overrides:
            raise ConfigError("a recipe replays as written; overrides are for study configs.")
        return _replay(raw, quiet=args.quiet)
    cfg = load_config(raw, args.overrides)
    study = run_study(cfg, quiet=args.quiet)
    print_front(study)
    print(f"study {cfg.study.name!r} is stored in {_masked(cfg.study.storage)}")
    return _outcome(study)


def _masked(url: str) -> str:
    from paretune.search._storage import mask_url

    return mask_url(url)


def _outcome(study: Any) -> int:
    """1, with the most common failure reason, when the study has no completed trial."""
    import collections

    import optuna

    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return 0
    errors = collections.Counter(
        str(t.user_attrs.get("error", "no reason recorded")) for t in study.trials
    )
    if errors:
        (reason, count), = errors.most_common(1)
        why = f"; {count} of {len(study.trials)} failed with: {reason}"
    else:
        why = ""
    print(f"paretune: error: study {study.study_name!r} has no completed trial{why}",
          file=sys.stderr)
    return 1


def _replay(recipe: dict[str, Any], quiet: bool) -> int:
    """Run a recipe's trial again, with training progress, and compare its metrics."""
    from paretune.search._config import parse_space
    from paretune.search._recipe import check_recipe_data, recipe_spec
    from paretune.trial import run_trial

    params = recipe.get("params")
    if not isinstance(params, dict):
        raise ConfigError("recipe 'params' must map knob names to values, as paretune export "
                          "writes it.")
    try:
        parse_space(dict(params))  # unknown knobs and values a family refuses, before loading
    except ConfigError as exc:
        raise ConfigError(f"recipe: {str(exc).replace('space.', 'params.')}") from None
    spec = recipe_spec(recipe, progress=not quiet)
    check_recipe_data(recipe, spec)  # a moved file is exit 2, as for a study
    if not quiet:
        print(f"paretune: replaying trial {recipe.get('trial')} of study "
              f"{recipe.get('study')!r}", file=sys.stderr)
    result = run_trial(spec)
    if result.state != "complete":
        print(f"replay of trial {recipe.get('trial')} FAILED: {result.error}", file=sys.stderr)
        return 1
    print(_table(
        [[k, f"{recipe.get('metrics', {}).get(k, float('nan')):.4g}", f"{v:.4g}"]
         for k, v in result.metrics.items()],
        ["metric", "recorded", "replayed"],
    ))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from paretune.search import load_config, run_study
    from paretune.search._engine import resolved_device

    cfg = load_config(str(DEMO_CONFIG), args.overrides)
    if not args.quiet:
        print(f"paretune demo: {cfg.study.n_trials} trials of all-MiniLM-L6-v2 on BBC News "
              f"({cfg.task.max_train_rows} train / {cfg.task.max_eval_rows} eval articles), on "
              f"{resolved_device(cfg)}", file=sys.stderr)
    study = run_study(cfg, quiet=args.quiet)
    print_front(study)
    storage = _masked(cfg.study.storage)
    print(f"study {cfg.study.name!r} is stored in {storage}; next: "
          f"paretune front --study {cfg.study.name} --storage {storage}")
    return _outcome(study)


def cmd_front(args: argparse.Namespace) -> int:
    from paretune.search import load_study

    print_front(load_study(args.study, args.storage))
    return 0


def _write_text(path: Path, text: str, flag: str = "-o") -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"{flag} {str(path)!r} cannot be written: {exc.strerror or exc}."
                          ) from None


def cmd_export(args: argparse.Namespace) -> int:
    import yaml

    from paretune.search import load_study, make_recipe, pick_trial

    study = load_study(args.study, args.storage)
    if args.front:
        from paretune.search import front_trials

        front = front_trials(study)
        if not front:
            raise ConfigError(f"study {args.study!r} has no completed feasible trial to export.")
        out = Path(args.output)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"-o {args.output!r} is a file; --front writes a directory.")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"-o {args.output!r} cannot be created: {exc.strerror or exc}."
                              ) from None
        for t in front:
            path = out / f"trial-{t.number}.yaml"
            _write_text(path, yaml.safe_dump(make_recipe(study, t), sort_keys=False))
            print(path)
        print(f"wrote {len(front)} recipes, one per Pareto-optimal trial, to {out}",
              file=sys.stderr)
        return 0
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {args.output!r} is a directory; give a file, e.g. "
                          f"{out / 'recipe.yaml'}.")
    if not out.parent.is_dir():
        raise ConfigError(f"-o {args.output!r}: the directory {str(out.parent)!r} does not "
                          "exist.")
    trial = pick_trial(study, trial=args.trial, pick=args.pick)
    recipe = make_recipe(study, trial)
    _write_text(out, yaml.safe_dump(recipe, sort_keys=False))
    print(f"wrote recipe of trial {trial.number} to {args.output}")
    if args.trial is None and (args.pick or "knee") == "knee":
        print(knee_reason(study, trial), file=sys.stderr)
    return 0


def knee_reason(study: Any, chosen: Any) -> str:
    """Which point the knee is, and why: its distance, and how a tie was broken."""
    from paretune.search import front_trials
    from paretune.search._front import knee_explained
    from paretune.search._recipe import quality_index

    front = front_trials(study)
    directions = [d.name.lower() for d in study.directions]
    prefer = quality_index(study)
    point, distance, tied = knee_explained(front, directions, lambda t: t.values, prefer)
    names = list(study.user_attrs.get("paretune.objectives", {})) or study.metric_names or []
    text = (
        f"knee: trial {point.number} of {len(front)} on the front, the closest to the ideal "
        f"point (the best value of each objective) once each objective is scaled to the "
        f"front's range (distance {distance:.3g})"
    )
    if tied:
        others = ", ".join(str(t.number) for t in tied)
        text += (f"; trial {others} {'is' if len(tied) == 1 else 'are'} as close, the tie "
                 f"goes to the better {names[prefer] if names else 'first objective'}")
    return text + "."


def cmd_plot(args: argparse.Namespace) -> int:
    from paretune.search import load_study
    from paretune.search._plots import write_plot

    study = load_study(args.study, args.storage)
    write_plot(study, args.kind, args.target, args.output)
    print(f"wrote the {args.kind} plot of study {args.study!r} to {args.output}")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    import yaml

    from paretune.search._materialize import materialize

    path = Path(args.recipe)
    if not path.is_file():
        raise ConfigError(
            f"recipe {args.recipe!r} does not exist; write one with paretune export."
        )
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"recipe {args.recipe!r} is not valid YAML.") from None
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {args.recipe!r} must be a mapping written by paretune export.")
    done = materialize(recipe, args.output, device=args.device, cache_dir=args.cache_dir,
                       progress=not args.quiet)
    print(_table(
        [[k, f"{done.recorded[k]:.4g}" if k in done.recorded else "-", f"{v:.4g}"]
         for k, v in done.measured.items()],
        ["metric", "recorded", "re-measured"],
    ))
    print(f"materialized trial {recipe.get('trial')} of study {recipe.get('study')!r} into "
          f"{done.directory} (model card: {done.directory / 'README.md'})")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from paretune.search._dashboard import serve

    serve(args.storage, args.host, args.port)
    return 0


COMMANDS = {
    "run": cmd_run, "demo": cmd_demo, "front": cmd_front, "export": cmd_export,
    "plot": cmd_plot, "materialize": cmd_materialize, "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ParetuneError as exc:
        if os.environ.get("PARETUNE_DEBUG"):
            traceback.print_exc()
        print(f"paretune: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1  # 2: the input; 1: the run failed
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if str(exc) == "SIGTERM" else "interrupted"
        print(f"paretune: {how}; completed trials are stored, re-run to resume.",
              file=sys.stderr)
        return 143 if how.startswith("stopped") else 130


if __name__ == "__main__":
    sys.exit(main())
