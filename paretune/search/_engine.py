"""The engine: Optuna ask/tell in the driver, trials run by a launcher, results told back."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paretune.errors import ConfigError, ParetuneError
from paretune.launchers._base import CANCELLED
from paretune.search._config import Config
from paretune.search._hypervolume import FrontTracker
from paretune.search._space import grid_points, suggest
from paretune.search._storage import (
    HEARTBEAT_KEY,
    Heartbeat,
    StorageLost,
    asking,
    checkpoint_sqlite,
    describe,
    fail_stale,
    mask_url,
    open_storage,
    storage_hint,
)
from paretune.search._summary import effective_params, format_params, summary
from paretune.stopping import KNOWN_BEFORE_TRAINING, QUALITY, StopRule
from paretune.trial import TrialResult, TrialSpec, run_trial

if TYPE_CHECKING:
    import optuna

    from paretune.launchers import BaseLauncher

__all__ = [
    "StorageLost", "Terminated", "TrialsFailing", "make_sampler", "open_study", "run_study",
    "tell_result",
]

INTERRUPTED = (
    "interrupted: the driver running this trial stopped sending heartbeats (it was killed, "
    "or lost its machine) before the trial finished"
)
STOPPED = "cancelled: the search was stopped (SIGTERM) while this trial ran"
# failures that are not the trial's own: not counted toward n_trials, the trial is replaced
LOST = ("worker lost:", "cancelled:", "interrupted:")
CONSTRAINTS_KEY = "constraints"  # trial system attr; see tell_result
DUPLICATE = "the same knobs as trial"  # a drawn twin of an earlier trial (see _Run.ask)
# twins drawn in a row before the driver waits for a result; with none running it stops:
# the space has no new point left (a small grid-like space, every knob fixed)
MAX_TWINS_IN_A_ROW = 25


class TrialsFailing(ParetuneError):
    """Trial after trial failed: the run stopped asking for more."""


def make_sampler(cfg: Config, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in the config. Constraints reach it through the values ``tell_result``
    records (``Trial.constraints``).

    ``grid`` enumerates its points itself (see ``grid_points``) and enqueues each one, so
    conditional knobs never multiply into duplicate trials; the sampler behind it is unused.
    ``seed_offset`` (the trials a resumed study holds) keeps a resumed seeded sampler from
    drawing the points it drew before.
    """
    import optuna

    seed, name = cfg.study.seed + seed_offset, cfg.study.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # constant_liar: trials still running count as bad points, so that parallel
            # workers are not all sent to the same region
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True,
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
    """Create the study, or resume it if the name exists (same model, task, objectives and
    choice lists). Fails the trials of drivers that are gone (``_fail_stale``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(
        cfg.study.storage, create=True, heartbeat_interval=cfg.study.heartbeat_interval,
        grace_period=cfg.study.grace_period,
    )
    try:
        # drivers starting together: one creates the study and writes its attributes while
        # the others wait, then they find them all
        with asking(cfg.study.storage, storage):
            study = optuna.create_study(
                storage=storage, study_name=cfg.study.name,
                directions=cfg.directions(),  # type: ignore[arg-type]
                sampler=make_sampler(cfg), load_if_exists=True,
            )
            _init_or_check(study, cfg)
        _fail_stale(study, cfg)
        # a resumed seeded sampler must not draw the points it drew before
        study.sampler = make_sampler(cfg, seed_offset=len(study.get_trials(deepcopy=False)))
    except (optuna.exceptions.StorageInternalError, _sql_errors()) as exc:
        raise ConfigError(
            f"study.storage {mask_url(cfg.study.storage)!r} cannot be written: "
            f"{describe(exc, cfg.study.storage)}"
        ) from None
    return study


def _sql_errors() -> type[Exception]:
    import sqlalchemy.exc

    return sqlalchemy.exc.SQLAlchemyError


def _init_or_check(study: optuna.Study, cfg: Config) -> None:
    """A new study gets its metric names and context; a resumed one must match them."""
    import optuna

    context = cfg.context()
    stored = study.user_attrs.get("paretune.context")
    if stored is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.study.objectives))
        study.set_user_attr("paretune.objectives", cfg.study.objectives)
        study.set_user_attr("paretune.constraints", list(cfg.study.constraints))
        study.set_user_attr("paretune.context", context)  # last: it marks the study complete
        return
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
    _check_space_unchanged(study, cfg)


class _Probe:
    """Stands in for an Optuna trial to learn which distribution a knob would suggest."""

    def __init__(self) -> None:
        self.dist: Any = None

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        from optuna.distributions import FloatDistribution

        self.dist = FloatDistribution(low, high, log=log, step=step)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False,
                    step: int = 1) -> int:
        from optuna.distributions import IntDistribution

        self.dist = IntDistribution(low, high, log=log, step=step)
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        from optuna.distributions import CategoricalDistribution

        self.dist = CategoricalDistribution(choices)
        return choices[0]


def _knob_distributions(cfg: Config) -> dict[str, Any]:
    """Each searched knob's Optuna distribution, as ``suggest`` would ask for it (a range
    that moves with another knob, a ``Switch``, by one of its cases: they share kind and
    log scale)."""
    from paretune import spaces

    out = {}
    for name, spec in cfg.space.items():
        probe = _Probe()
        leaf = spec.leaves()[0] if isinstance(spec, spaces.Switch) else spec
        leaf.suggest(probe, name)
        if probe.dist is not None:
            out[name] = probe.dist
    return out


def _check_space_unchanged(study: optuna.Study, cfg: Config) -> None:
    """Optuna keeps a knob's kind and choice list for the whole study: say so up front,
    before a trial is asked for, rather than fail inside it."""
    from optuna.distributions import CategoricalDistribution

    recorded: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            recorded.setdefault(name, dist)
    for name, new in _knob_distributions(cfg).items():
        old = recorded.get(name)
        if old is None:
            continue
        if isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution):
            if tuple(old.choices) == tuple(new.choices):
                continue
            was, now = f"choices {list(old.choices)}", f"{list(new.choices)}"
        elif type(old) is type(new) and getattr(old, "log", False) == getattr(new, "log", False):
            continue  # ranges may move: Optuna allows it
        else:
            was, now = _kind(old), _kind(new)
        raise ConfigError(
            f"study {cfg.study.name!r} was created with space.{name} {was}, not {now}; a "
            f"resumed study keeps each knob's choices and kind (Optuna's rule): restore "
            f"space.{name} or use a new study.name."
        )


def _kind(dist: Any) -> str:
    if hasattr(dist, "choices"):
        return f"choices {list(dist.choices)}"
    scale = " (log)" if getattr(dist, "log", False) else ""
    return f"a {type(dist).__name__.replace('Distribution', '').lower()} range{scale}"


def _fail_stale(study: optuna.Study, cfg: Config) -> list[int]:
    """Fail the RUNNING trials whose driver stopped sending heartbeats (killed, lost its
    machine); a trial of a live driver is never touched. See ``_storage.fail_stale``."""
    return fail_stale(study, study._storage, INTERRUPTED, cfg.study.grace_period)


def tell_result(study: optuna.Study, trial: optuna.Trial, result: TrialResult, cfg: Config) -> str:
    """Record every metric and the error text on the trial; tell Optuna. Returns the state."""
    import optuna

    for name, value in result.metrics.items():
        trial.set_user_attr(name, value)
    for name, text in result.notes.items():  # what the metrics were measured on
        trial.set_user_attr(name, text)
    trial.set_user_attr("duration_s", round(result.duration_s, 3))
    if result.intermediate:
        trial.set_user_attr("intermediate", [list(p) for p in result.intermediate])
    if result.state == "pruned":
        trial.set_user_attr("stopped", result.error)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
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
    violations = []
    for metric, op, bound in cfg.constraint_bounds():
        value = result.metrics[metric]
        violations.append((bound - value) if op == ">=" else (value - bound))
    if violations:
        # A list under "constraints", as Optuna's own constraints_func writes it: Optuna's
        # samplers and Trial.constraints read it, and so does optuna-dashboard (which does
        # not read Trial.set_constraint's keys). The texts are the study's
        # ``paretune.constraints``, in the same order.
        study._storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, violations)
        trial.set_user_attr("feasible", all(v <= 0 for v in violations))
    study.tell(trial, values)
    return "complete"


def _counts(t: optuna.trial.FrozenTrial) -> str:
    """How a trial counts toward ``study.n_trials``: "finished" (completed, or failed for its
    own reason: NaN, out of memory, an impossible knob), "lost" (its worker, node or driver
    died, or the run was stopped: replaced), "pruned" (stopped early: replaced, up to
    ``n_trials`` of them), "running" or "waiting" (enqueued, not asked for yet)."""
    import optuna

    state = t.state
    if state == optuna.trial.TrialState.RUNNING:
        return "running"
    if state == optuna.trial.TrialState.FAIL:
        return "lost" if str(t.user_attrs.get("error", "")).startswith(LOST) else "finished"
    if state == optuna.trial.TrialState.PRUNED:
        return "pruned"
    if state == optuna.trial.TrialState.COMPLETE:
        return "finished"
    return "waiting"


@dataclass
class _Tally:
    complete: int = 0
    own_failures: int = 0  # failed for their own reason: counted
    pruned: int = 0
    running: int = 0  # every driver's

    def finished(self, n_trials: int) -> int:
        """Trials that count toward ``n_trials``: a stopped (pruned) trial is not a
        completed one and is replaced, but at most ``n_trials`` of them are."""
        return self.complete + self.own_failures + max(0, self.pruned - n_trials)


def _tally(study: optuna.Study) -> _Tally:
    import optuna

    tally = _Tally()
    for t in study.get_trials(deepcopy=False):
        kind = _counts(t)
        if t.state == optuna.trial.TrialState.COMPLETE:
            tally.complete += 1
        elif kind == "finished":
            tally.own_failures += 1
        tally.pruned += kind == "pruned"
        tally.running += kind == "running"
    return tally


def _grid_todo(study: optuna.Study, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid points no trial has taken yet (completed, running, or failed on its own), as
    the searched params Optuna should enqueue."""
    taken = [t.params for t in study.get_trials(deepcopy=False) if _counts(t) != "lost"]
    return [p for p in points if p not in taken]


def _fmt(result: TrialResult, params: dict[str, Any]) -> str:
    if result.state == "pruned":
        return f"trial {result.number} stopped after {result.duration_s:.1f}s: {result.error}"
    if result.state != "complete":
        return f"trial {result.number} FAILED after {result.duration_s:.1f}s: {result.error}"
    metrics = " ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    return f"trial {result.number} done in {result.duration_s:.1f}s: {metrics} | " + (
        format_params(effective_params(params))
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, SLURM, Kubernetes): stops a run the way Ctrl-C does."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While a run is in progress, SIGTERM raises ``Terminated`` in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolved_device(cfg: Config) -> str:
    """``launcher.device`` as trials will see it: ``auto`` is cuda with a GPU, else cpu."""
    if cfg.launcher.device != "auto":
        return cfg.launcher.device
    from paretune.launchers.multiprocess import visible_gpus

    return "cuda" if visible_gpus() else "cpu"


def launcher_options(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """The launcher's options. ``launcher.mps: auto`` leaves MPS off where latency is an
    objective timed on the GPU: under MPS the same model timed 1.4x slower than without,
    and 8 packed copies of it spread +/-10% instead of +/-1% (bench/RESULTS.md)."""
    options = cfg.launcher.options()
    timed = {"latency_ms", "latency_ms_iqr"} & set(cfg.study.objectives)
    if (options.get("mps") == "auto" and timed and cfg.measure.device == "auto"
            and resolved_device(cfg).startswith("cuda")):
        options["mps"] = "off"
        log(f"[paretune] MPS: not used, since {sorted(timed)[0]} is an objective timed on the "
            f"GPU and MPS slows and spreads those timings; launcher.mps: on uses it anyway")
    return options


class _Run:
    """One driver's run of a study: asks while the study needs trials, tells results.

    Several drivers may run one study: each counts the study's trials before asking for
    another, so together they finish ``n_trials`` (see ``_remaining``), and each beats the
    heartbeat of its own running trials only.
    """

    def __init__(self, study: optuna.Study, cfg: Config, launcher: BaseLauncher,
                 trial_fn: Callable[[TrialSpec], TrialResult],
                 grid: list[dict[str, Any]] | None, progress: bool,
                 chance: float | None = None) -> None:
        self.study, self.cfg, self.launcher, self.trial_fn = study, cfg, launcher, trial_fn
        self.grid, self.chance = grid, chance
        self.context = {**cfg.context(), "progress": progress}  # training progress in trials
        self.pending: dict[int, tuple[optuna.Trial, dict[str, Any]]] = {}
        self.heartbeat = Heartbeat(study._storage, cfg.study.heartbeat_interval)
        self.last_stale_check = time.monotonic()
        self.failed_in_a_row = 0
        self.stop_reason: str | None = None
        self.step = "starting"  # what the driver does with the storage, for its errors
        self.next_number = len(study.get_trials(deepcopy=False))  # if no other driver asks
        self.deadline = None if cfg.study.timeout is None else (
            time.monotonic() + cfg.study.timeout)

    def out_of_time(self) -> bool:
        """``study.timeout`` has passed: ask for nothing new, let running trials finish."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def ask(self) -> int | None:
        """Ask for a trial and submit it. A trial drawn with the knobs of one the study
        already holds (completed, stopped or running) is not run again: every trial trains
        with the study's seed, so it would repeat that trial's result. It is recorded as
        stopped (PRUNED, replaced like any stopped trial) and its twin's number returned."""
        self.step = "asking for a new trial"
        with asking(self.cfg.study.storage, self.study._storage), warnings.catch_warnings():
            if self.grid is not None:
                self.study.enqueue_trial(_grid_todo(self.study, self.grid)[0])
            # Optuna's heartbeat is documented for Study.optimize; ask/tell beats it here
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        if trial.number != self.next_number:
            # another driver asked in between: seed by the trial's number, or drivers that
            # started together would all draw the same points from the same seed
            self.study.sampler = make_sampler(self.cfg, seed_offset=trial.number)
        self.next_number = trial.number + 1
        self.heartbeat.add(trial._trial_id)
        self.study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_KEY, True)
        try:
            params = suggest(trial, self.cfg.space, self.cfg.info)
        except ValueError as exc:  # Optuna refused a knob: the space changed under the study
            self.fail_unstarted(trial, f"the space does not fit this study: {exc}")
            raise ConfigError(
                f"study {self.cfg.study.name!r}: {exc}; use a new study.name to change the space."
            ) from None
        trial.set_user_attr("params", params)
        trial.set_user_attr("summary", summary(params))
        twin = _twin(self.study, trial.number, params, self.cfg.info)
        if twin is not None:
            import optuna

            self.heartbeat.discard(trial._trial_id)
            trial.set_user_attr("duplicate_of", twin)
            trial.set_user_attr("stopped", f"{DUPLICATE} {twin}: not run again, its result "
                                           "stands")
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return twin
        self.pending[trial.number] = (trial, params)
        rule = stop_rule(self.study, self.cfg, self.chance) if self.cfg.study.early_stopping \
            else None
        context = {**self.context, "stop_rule": rule}
        self.launcher.submit(self.trial_fn, TrialSpec(trial.number, params, context))
        return None

    def fail_unstarted(self, trial: optuna.Trial, error: str) -> None:
        import optuna

        self.heartbeat.discard(trial._trial_id)
        trial.set_user_attr("error", error)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def tell(self, result: TrialResult) -> tuple[str, dict[str, Any]]:
        """Record the result. A trial another driver already failed as stale (this driver's
        heartbeats were late) cannot be told any more: it counts as lost, and is replaced."""
        import optuna

        trial, params = self.pending.pop(result.number)
        self.step = f"recording trial {result.number}"
        try:
            state = tell_result(self.study, trial, result, self.cfg)
        except optuna.exceptions.UpdateFinishedTrialError:
            state = "lost"
        finally:
            self.heartbeat.discard(trial._trial_id)
        if result.error is not None and result.error.startswith(LOST):
            state = "lost"
        failed = state not in ("complete", "pruned")
        self.failed_in_a_row = self.failed_in_a_row + 1 if failed else 0
        if self.failed_in_a_row >= self.max_failures_in_a_row and self.stop_reason is None:
            self.stop_reason = (
                f"stopped asking for trials: the last {self.failed_in_a_row} trials all failed "
                f"(the last one: {result.error}); fix the cause and re-run to resume"
            )
        return state, params

    @property
    def max_failures_in_a_row(self) -> int:
        return max(10, 2 * max(1, self.launcher.max_concurrent))

    def check_stale(self, log: Callable[[str], None]) -> None:
        if time.monotonic() - self.last_stale_check < self.cfg.study.heartbeat_interval:
            return
        self.last_stale_check = time.monotonic()
        for number in _fail_stale(self.study, self.cfg):
            log(f"trial {number} FAILED: {INTERRUPTED}")

    def cancel(self, error: str | None = None) -> None:
        """Ctrl-C, SIGTERM or a lost storage: record running trials as cancelled."""
        for result in self.launcher.cancel():
            if result.number in self.pending:
                if error is not None and result.error == CANCELLED:
                    result.error = error
                self.tell(result)
        for trial, _ in list(self.pending.values()):
            self.tell(TrialResult(trial.number, "fail", error=error or CANCELLED))

    def close(self) -> None:
        self.heartbeat.stop()


def _twin(study: optuna.Study, number: int, params: dict[str, Any],
          info: Any = None) -> int | None:
    """The first other trial drawn with ``params`` that completed, was stopped or is running
    (a failed one may have failed for a passing reason: it may run again). Knobs that change
    nothing for these params on the model (``spaces.same_model``) are not compared."""
    import optuna

    from paretune.spaces import same_model

    state = optuna.trial.TrialState
    mine = same_model(params, info)
    for t in study.get_trials(deepcopy=False,
                              states=(state.COMPLETE, state.PRUNED, state.RUNNING)):
        theirs = t.user_attrs.get("params")
        if t.number != number and "duplicate_of" not in t.user_attrs \
                and theirs is not None and same_model(theirs, info) == mine:
            return t.number
    return None


def _check_same_data(study: optuna.Study, cfg: Config) -> None:
    """A resumed study runs on the rows it was created on: with its data file edited, its
    new trials would be measured on other rows than its old ones, in one front."""
    mine = _task_data(cfg).fingerprint
    stored = study.user_attrs.get("paretune.data")
    if stored is None:  # a new study (or one from before this check): it records its rows
        study.set_user_attr("paretune.data", mine)
    elif stored != mine:
        raise ConfigError(
            f"study {cfg.study.name!r} was created on other rows than task.dataset "
            f"{cfg.task.dataset!r} holds now (the file or its eval split changed since); a "
            "resumed study keeps its data: restore the file, or use a new study.name."
        )


def _task_data(cfg: Config) -> Any:
    from paretune import data

    return data.load_task_data(dataclasses.asdict(cfg.task), cfg.study.seed)


def _anchors_for(cfg: Config, dataset: Any) -> list[dict[str, Any]]:
    from paretune import reference
    from paretune.search._anchors import anchors

    recipe = reference.recipe_for(len(dataset.train_texts), cfg.info.hidden_size)
    return anchors(cfg.space, cfg.info, recipe)


def _chance(cfg: Config, dataset: Any) -> float | None:
    """The majority class's share of the eval split: what a model that learned nothing
    scores (classification only)."""
    if cfg.task.type != "classification":
        return None
    labels = (dataset or _task_data(cfg)).eval_labels
    if not labels:
        return None
    return max(labels.count(c) for c in set(labels)) / len(labels)


def stop_rule(study: optuna.Study, cfg: Config, chance: float | None) -> StopRule | None:
    """What a trial needs to stop when hopeless (``paretune.stopping``), with the front as it
    stands now; None where the study has no quality objective."""
    from paretune.search._recipe import front_trials

    names = list(cfg.study.objectives)
    quality = next((n for n in names if n in QUALITY), None)
    if quality is None:
        return None
    others = tuple(n for n in names if n != quality)
    known = all(n in KNOWN_BEFORE_TRAINING for n in others)
    front: tuple[Any, ...] = ()
    if known and others:
        front = tuple((dict(zip(names, t.values)), t.number) for t in front_trials(study))
    return StopRule(
        quality=quality, maximize=cfg.study.objectives[quality] == "maximize",
        chance=chance if quality == "accuracy" else None, front=front,
        costs=others if known else (),
    )


def run_study(
    cfg: Config,
    *,
    launcher: BaseLauncher | None = None,
    trial_fn: Callable[[TrialSpec], TrialResult] = run_trial,
    log: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> optuna.Study:
    """Run trials until the study has ``cfg.study.n_trials`` finished ones, or until
    ``cfg.study.timeout`` has passed and the running trials have finished; return it.

    Finished: completed, or failed for the trial's own reason (NaN, out of memory, an
    impossible knob). Trials lost to a dead worker, node or driver, or to Ctrl-C, are
    replaced, and so are trials stopped early (PRUNED), up to ``n_trials`` of them. Several
    drivers may run one study at once; they share the count.
    Asynchronous: a new trial is asked for as soon as any running one finishes. Progress
    (a live status line, per-trial lines, training progress) goes to stderr unless ``quiet``;
    ``log`` replaces the per-trial lines. The hypervolume history is recorded on the study.

    Raises ``Terminated`` (a ``KeyboardInterrupt``) on SIGTERM, after recording running
    trials as cancelled, as on Ctrl-C; ``StorageLost`` if the storage stops accepting
    writes; ``TrialsFailing`` if trial after trial fails. Recorded trials are kept.
    """
    from paretune.launchers import make_launcher
    from paretune.progress import Progress

    study = open_study(cfg)
    _check_same_data(study, cfg)
    progress = Progress(0, quiet=quiet)
    log = log or progress.log
    grid = grid_points(cfg.space, cfg.info) if cfg.study.sampler == "grid" else None
    tally = _tally(study)
    if _remaining(study, cfg, grid) == 0 and tally.running == 0:
        progress.close()
        log(f"study {cfg.study.name!r} already has {tally.finished(cfg.study.n_trials)} "
            f"finished trials ({tally.complete} completed); nothing to run.")
        checkpoint_sqlite(cfg.study.storage, study._storage)
        return study
    for note in cfg.notes:
        log(note)
    dataset = None
    if cfg.study.anchors and grid is None and not study.get_trials(deepcopy=False):
        dataset = _task_data(cfg)
        anchors = _anchors_for(cfg, dataset)
        with asking(cfg.study.storage, study._storage):  # drivers starting at once: once
            if not study.get_trials(deepcopy=False):
                # no more than the study runs: the rest would wait in the storage
                for params in anchors[: cfg.study.n_trials]:
                    study.enqueue_trial(params, skip_if_exists=True)
    chance = _chance(cfg, dataset) if cfg.study.early_stopping else None
    run = None
    try:
        with _sigterm_stops():
            launcher = launcher or make_launcher(cfg.launcher.type,
                                                 **launcher_options(cfg, log))
            run = _Run(study, cfg, launcher, trial_fn, grid, not quiet, chance)
            progress.total = _remaining(study, cfg, grid)
            log(f"study {cfg.study.name!r}: running {progress.total} trials on "
                f"{resolved_device(cfg)} ({tally.complete} completed before)")
            _loop(run, FrontTracker(study, cfg.reference_point()), progress, log)
    except KeyboardInterrupt as exc:
        if run is not None:
            run.cancel(STOPPED if isinstance(exc, Terminated) else None)
        raise
    except ParetuneError:
        if run is not None:
            run.cancel()
        raise
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
        raise _storage_lost(run, cfg, exc) from None
    finally:
        progress.close()
        if run is not None:
            run.close()
        if launcher is not None:
            launcher.close()
        checkpoint_sqlite(cfg.study.storage, study._storage)
    if run.stop_reason is not None:
        raise TrialsFailing(f"study {cfg.study.name!r}: {run.stop_reason}.")
    return study


def _remaining(study: optuna.Study, cfg: Config, grid: list[dict[str, Any]] | None) -> int:
    """Trials a driver may still ask for: ``n_trials`` less the study's finished and running
    ones (every driver's), and for a grid the points nobody has taken."""
    tally = _tally(study)
    left = cfg.study.n_trials - tally.finished(cfg.study.n_trials) - tally.running
    if grid is not None:
        left = min(left, len(_grid_todo(study, grid)))
    return max(0, left)


def _loop(run: _Run, front: FrontTracker, progress: Any, log: Callable[[str], None]) -> None:
    """Ask while the study needs trials and a slot is free; tell results as they come."""
    launcher, cfg = run.launcher, run.cfg
    while True:
        run.check_stale(log)
        late = run.out_of_time()
        want = 0 if run.stop_reason or late else _remaining(run.study, cfg, run.grid)
        slots = min(max(1, launcher.max_concurrent) - len(run.pending), want)
        asked, twins = 0, 0
        # a drawn twin of an earlier trial frees its slot at once: draw again, a few times
        while asked < slots and twins < MAX_TWINS_IN_A_ROW:
            twin = run.ask()
            if twin is None:
                asked, twins = asked + 1, 0
                progress.started()
            else:
                twins += 1
                log(f"trial {run.next_number - 1} skipped: {DUPLICATE} {twin}")
                if run.grid is not None and not _grid_todo(run.study, run.grid):
                    break  # the grid's last points were twins: none is left to draw
        if twins >= MAX_TWINS_IN_A_ROW and not run.pending:
            log(f"stopped asking: the last {twins} points drawn were all trials the study "
                f"already holds, so the space may have no new point left "
                f"({_tally(run.study).complete} completed); widen the space to go on.")
            return
        progress.total = max(progress.total, progress.done + progress.failed + progress.running)
        if run.pending:
            for result in launcher.wait():
                state, params = run.tell(result)
                front.update()
                log(_fmt(result, params) + (" (lost: replaced)" if state == "lost" else ""))
                progress.finished(state, front.size, front.hypervolume)
            continue
        tally = _tally(run.study)
        if late:
            log(f"study.timeout of {cfg.study.timeout:g}s reached: {tally.complete} trials "
                f"completed; re-run to go on.")
            return
        if run.stop_reason or want == 0 and (
            tally.running == 0 or tally.finished(cfg.study.n_trials) >= cfg.study.n_trials
        ):
            return
        # Other drivers still run trials this study needs: wait for them; if one of them
        # dies (its heartbeat stops), its trials are failed here and replaced.
        time.sleep(min(1.0, cfg.study.heartbeat_interval))


def _storage_lost(run: _Run | None, cfg: Config, exc: BaseException) -> StorageLost:
    """Stop cleanly: what can still be recorded is, the rest stays as it was."""
    where = f" while {run.step}" if run is not None else ""
    if run is not None:
        try:
            run.cancel()
        except Exception:  # noqa: BLE001  (the storage is gone: nothing more is recorded)
            pass
    reason = describe(exc, cfg.study.storage)
    return StorageLost(
        f"the study storage {mask_url(cfg.study.storage)!r} stopped accepting writes{where}: "
        f"{reason}{storage_hint(reason)}; the trials recorded before are kept: re-run to resume."
    )


def _is_storage_error(exc: BaseException) -> bool:
    import optuna

    return isinstance(exc, (optuna.exceptions.StorageInternalError, _sql_errors()))
