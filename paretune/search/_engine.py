"""The engine: Optuna ask/tell in the driver, trials run by a launcher, results told back."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paretune.errors import ConfigError
from paretune.launchers._base import CANCELLED
from paretune.search._config import Config
from paretune.search._hypervolume import FrontTracker
from paretune.search._space import grid_points, suggest
from paretune.search._storage import driver_storage
from paretune.trial import TrialResult, TrialSpec, run_trial

if TYPE_CHECKING:
    import optuna

    from paretune.launchers import BaseLauncher

__all__ = ["make_sampler", "open_study", "run_study", "tell_result"]

INTERRUPTED = "interrupted: the run that started this trial ended before the trial finished"


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    import optuna

    """The sampler named in the config. Constraints reach it through ``Trial.set_constraint``.

    ``grid`` enumerates its points itself (see ``grid_points``) and enqueues each one, so
    conditional knobs never multiply into duplicate trials; the sampler behind it is unused.
    """
    seed, name = cfg.study.seed, cfg.study.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True,
                n_startup_trials=min(10, max(2, cfg.study.n_trials // 3)),
            )
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name in ("random", "grid"):
            return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}")  # parse_config already rejects it


def open_study(cfg: Config) -> optuna.Study:
    """Create the study, or resume it if the name exists (same model, task and objectives)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names, directions = list(cfg.study.objectives), cfg.directions()
    try:
        study = optuna.create_study(
            storage=driver_storage(cfg.study.storage), study_name=cfg.study.name,
            directions=directions,  # type: ignore[arg-type]
            sampler=make_sampler(cfg), load_if_exists=True,
        )
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as exc:
        raise ConfigError(f"study.storage {cfg.study.storage!r} cannot be opened: {exc}") from None
    context = cfg.context()
    stored = study.user_attrs.get("paretune.context")
    if stored is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
        study.set_user_attr("paretune.context", context)
        study.set_user_attr("paretune.objectives", cfg.study.objectives)
        return study
    old = study.user_attrs.get("paretune.objectives", {})
    if old != cfg.study.objectives:
        raise ConfigError(
            f"study {cfg.study.name!r} was created with objectives {old}, not "
            f"{cfg.study.objectives}; a resumed study keeps its objectives: use a new study.name."
        )
    for key in ("model", "task"):
        if stored.get(key) != context[key]:
            raise ConfigError(
                f"study {cfg.study.name!r} was created with {key} {stored.get(key)}, not "
                f"{context[key]}; a resumed study keeps its {key}: use a new study.name."
            )
    _fail_stale(study)
    return study


def _fail_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by an earlier run that died: nothing will ever finish them."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "error", INTERRUPTED)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def tell_result(study: optuna.Study, trial: optuna.Trial, result: TrialResult, cfg: Config) -> str:
    """Record every metric and the error text on the trial; tell Optuna. Returns the state."""
    import optuna

    for name, value in result.metrics.items():
        trial.set_user_attr(name, value)
    trial.set_user_attr("duration_s", round(result.duration_s, 3))
    error = result.error
    values: list[float] = []
    if result.state == "complete":
        for name in cfg.study.objectives:
            value = result.metrics.get(name)  # type: ignore[assignment]
            if value is None or not math.isfinite(value):
                error = f"objective {name} is {value}: the trial produced no usable value"
                break
            values.append(value)
    if error is not None:
        trial.set_user_attr("error", error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "fail"
    feasible = True
    for metric, op, bound in cfg.constraint_bounds():
        value = result.metrics[metric]
        violation = (bound - value) if op == ">=" else (value - bound)
        trial.set_constraint(f"{metric} {op} {bound}", violation)
        feasible = feasible and violation <= 0
    if cfg.study.constraints:
        trial.set_user_attr("feasible", feasible)
    study.tell(trial, values)
    return "complete"


def _grid_todo(study: optuna.Study, cfg: Config) -> list[dict[str, Any]]:
    """Grid points not completed yet, as the searched params Optuna should enqueue."""
    import optuna

    done = [
        t.params
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    return [p for p in grid_points(cfg) if p not in done]


def _fmt(result: TrialResult, params: dict[str, Any]) -> str:
    if result.state != "complete":
        return f"trial {result.number} FAILED after {result.duration_s:.1f}s: {result.error}"
    metrics = " ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    knobs = " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    return f"trial {result.number} done in {result.duration_s:.1f}s: {metrics} | {knobs}"


def run_study(
    cfg: Config,
    *,
    launcher: BaseLauncher | None = None,
    trial_fn: Callable[[TrialSpec], TrialResult] = run_trial,
    log: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> optuna.Study:
    """Run ``cfg.study.n_trials`` minus the trials already completed; return the study.

    Asynchronous: a new trial is asked for as soon as any running one finishes. Progress
    (a live status line, per-trial lines, training progress) goes to stderr unless ``quiet``;
    ``log`` replaces the per-trial lines. The hypervolume history is recorded on the study.
    """
    import optuna

    from paretune.launchers import make_launcher
    from paretune.progress import Progress

    study = open_study(cfg)
    front = FrontTracker(study, cfg.reference_point())
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    budget = cfg.study.n_trials - done
    grid: list[dict[str, Any]] = []
    if cfg.study.sampler == "grid":
        grid = _grid_todo(study, cfg)
        budget = min(budget, len(grid))
    progress = Progress(max(0, budget), quiet=quiet)
    log = log or progress.log
    if budget <= 0:
        log(f"study {cfg.study.name!r} already has {done} completed trials; nothing to run.")
        return study
    log(f"study {cfg.study.name!r}: running {budget} trials ({done} completed before)")
    launcher = launcher or make_launcher(cfg.launcher.type, **cfg.launcher.options())
    context = {**cfg.context(), "progress": not quiet}  # training progress inside trials
    pending: dict[int, tuple[optuna.Trial, dict[str, Any]]] = {}
    asked = 0
    try:
        while asked < budget or pending:
            while asked < budget and len(pending) < max(1, launcher.max_concurrent):
                if grid:
                    study.enqueue_trial(grid[asked])
                trial = study.ask()
                asked += 1
                params = suggest(trial, cfg.space)
                trial.set_user_attr("params", params)
                pending[trial.number] = (trial, params)
                launcher.submit(trial_fn, TrialSpec(trial.number, params, context))
                progress.started()
            for result in launcher.wait():
                trial, params = pending.pop(result.number)
                state = tell_result(study, trial, result, cfg)
                front.update()
                log(_fmt(result, params))
                progress.finished(state, front.size, front.hypervolume)
    except KeyboardInterrupt:
        for result in launcher.cancel():
            if result.number in pending:
                tell_result(study, pending.pop(result.number)[0], result, cfg)
        for trial, _ in pending.values():
            tell_result(study, trial, TrialResult(trial.number, "fail", error=CANCELLED), cfg)
        raise
    finally:
        progress.close()
        launcher.close()
    return study
