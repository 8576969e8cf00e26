"""Per-trial overhead of paretune's Ray launcher against Ray Tune + OptunaSearch.

A benchmark, not a test. Both sides run the same trivial 2-objective trial function over
paretune's joint space, with the same sampler (paretune's seeded multivariate TPE) and the
same concurrency, in one local Ray instance started once beforehand:

  optuna        plain Optuna ask/tell, in memory, one at a time (the floor)
  local         paretune's engine, local launcher, SQLite storage
  ray           paretune's engine, Ray launcher (actors), SQLite storage
  tune          Ray Tune + OptunaSearch (Tuner.fit), default settings
  tune-reuse    the same with TuneConfig(reuse_actors=True)  (--tune-reuse)

Per-trial overhead = wall time / trials (the trial itself takes microseconds).

    python bench/overhead.py                  # 200 trials, concurrency 2
    python bench/overhead.py --trials 50 --tune-reuse
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

OBJECTIVES = {"accuracy": "maximize", "size_mb": "minimize"}


def values(params: dict[str, Any]) -> dict[str, float]:
    """A cheap, deterministic trade-off: higher rank and batch buy accuracy, cost size."""
    lr = float(params.get("train.lr", 1e-4))
    r = float(params.get("lora.r", 64) if params.get("peft.method") == "lora" else 64)
    batch = float(params.get("train.batch_size", 16))
    accuracy = 0.9 - 0.05 * (math.log10(lr) + 4) ** 2 - 0.1 / r - 0.001 * batch
    return {"accuracy": accuracy, "size_mb": 10.0 + r + 0.1 * batch}


def trivial_trial(spec: Any) -> Any:
    from paretune.trial import TrialResult

    return TrialResult(spec.number, "complete", values(dict(spec.params)))


def tune_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report(values(config))


def tune_space(space: dict[str, Any], trial: Any) -> None:
    """Define-by-run for OptunaSearch: paretune's own joint space (Tune saves it: top-level)."""
    from paretune.search._space import suggest

    suggest(trial, space)


def make_config(storage: str, name: str, trials: int, concurrency: int, kind: str) -> Any:
    from paretune.search import parse_config

    raw = {
        "study": {"name": name, "storage": storage, "n_trials": trials, "seed": 0,
                  "sampler": "tpe", "objectives": OBJECTIVES},
        "model": {"name": "bench/no-model"},  # the trivial trial loads no model
        "launcher": {"type": kind, **({"max_concurrent": concurrency} if kind != "local" else {})},
    }
    return parse_config(raw, check_data=False)


def run_optuna(trials: int) -> float:
    import optuna

    from paretune.search._engine import make_sampler
    from paretune.search._space import suggest

    cfg = make_config("sqlite:///unused.db", "optuna", trials, 1, "local")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg))
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        v = values(suggest(trial, cfg.space))
        study.tell(trial, [v["accuracy"], v["size_mb"]])
    return time.perf_counter() - start


def run_paretune(kind: str, trials: int, concurrency: int, workdir: Path) -> float:
    from paretune.search import run_study

    storage = f"sqlite:///{workdir / f'{kind}.db'}"
    cfg = make_config(storage, kind, trials, concurrency, kind)
    start = time.perf_counter()
    study = run_study(cfg, trial_fn=trivial_trial, log=lambda line: None)
    wall = time.perf_counter() - start
    done = sum(t.state.name == "COMPLETE" for t in study.get_trials())
    assert done == trials, f"{kind}: {done} of {trials} trials completed"
    return wall


def run_tune(trials: int, concurrency: int, workdir: Path, reuse: bool) -> float:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from paretune.search._engine import make_sampler

    cfg = make_config("sqlite:///unused.db", "tune", trials, concurrency, "local")

    search = OptunaSearch(space=functools.partial(tune_space, cfg.space),
                          metric=list(OBJECTIVES), mode=["max", "min"], sampler=make_sampler(cfg))
    tuner = tune.Tuner(
        tune_trainable,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials,
                                    max_concurrent_trials=concurrency, reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=str(workdir / "tune"), name=f"reuse{reuse}",
                                  verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    assert len(results) == trials and not results.errors, results.errors
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--tune-reuse", action="store_true", help="also Tune with reuse_actors")
    parser.add_argument("--skip-tune", action="store_true")
    parser.add_argument("--no-wal", action="store_true",
                        help="SQLite with its default journal (as before paretune set WAL)")
    args = parser.parse_args()
    if args.no_wal:
        import sqlite3

        from paretune.search import _storage

        _storage._WalConnection = sqlite3.Connection  # type: ignore[misc]

    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=args.cpus or args.concurrency, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    n, c = args.trials, args.concurrency
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores; ray {ray.__version__}")
    print(f"{n} trivial 2-objective trials, seeded TPE, concurrency {c}"
          f"{'; SQLite default journal (--no-wal)' if args.no_wal else '; SQLite in WAL mode'}")
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="paretune-bench-") as tmp:
        workdir = Path(tmp)
        walls["optuna (in memory, sequential)"] = run_optuna(n)
        walls["paretune local launcher, SQLite"] = run_paretune("local", n, c, workdir)
        walls["paretune ray launcher, SQLite"] = run_paretune("ray", n, c, workdir)
        if not args.skip_tune:
            walls["ray tune + OptunaSearch"] = run_tune(n, c, workdir, reuse=False)
            if args.tune_reuse:
                walls["ray tune + OptunaSearch, reuse_actors"] = run_tune(n, c, workdir, True)
    ray.shutdown()
    for name, wall in walls.items():
        print(f"{name:40s} wall {wall:8.2f} s   per trial {1000 * wall / n:8.1f} ms")
    ours = walls["paretune ray launcher, SQLite"]
    print(f"target: ray launcher per trial <= 50 ms: {1000 * ours / n:.1f} ms -> "
          f"{'met' if 1000 * ours / n <= 50 else 'NOT met'}")
    if "ray tune + OptunaSearch" in walls:
        ratio = ours / walls["ray tune + OptunaSearch"]
        print(f"ratio paretune ray / ray tune: {ratio:.4f}  (target <= 0.05 -> "
              f"{'met' if ratio <= 0.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
