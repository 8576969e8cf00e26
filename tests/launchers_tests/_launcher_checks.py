"""Trial functions and checks shared by the multiprocess and Ray launcher tests.

The trial functions are top-level, so that worker processes can unpickle them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from paretune.launchers import BaseLauncher, make_launcher
from paretune.search import parse_config, run_study
from paretune.trial import TrialResult, TrialSpec, run_trial

QUALITY = ("accuracy", "size_mb", "trainable_params")  # latency and train time are timings


def timed_trial(spec: TrialSpec) -> TrialResult:
    """run_trial, plus which process ran it and when (to see two trials overlap)."""
    start = time.time()
    result = run_trial(spec)
    result.metrics.update(pid=float(os.getpid()), t_start=start, t_end=time.time())
    return result


def killed_on_trial_1(spec: TrialSpec) -> TrialResult:
    """Trial 1's worker process is killed in the middle of the trial; the rest train."""
    if spec.number == 1:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    return run_trial(spec)


def instant(spec: TrialSpec) -> TrialResult:
    """A trivial trial: two objectives from the learning rate."""
    lr = float(spec.params["train.lr"])
    return TrialResult(spec.number, "complete", {"accuracy": lr * 100, "size_mb": 1.0 / lr})


def stalls_on_trial_1(spec: TrialSpec) -> TrialResult:
    if spec.number == 1:
        time.sleep(120)
    return instant(spec)


def dies_once(spec: TrialSpec) -> TrialResult:
    """The first attempt's process dies (a marker file remembers it); a retry completes."""
    marker = Path(spec.context["marker"])
    if not marker.exists():
        marker.write_text("died once")
        os._exit(7)
    return TrialResult(spec.number, "complete", {"pid": float(os.getpid())})


def sleeps(spec: TrialSpec) -> TrialResult:
    time.sleep(float(spec.params["sleep"]))
    return TrialResult(spec.number, "complete", {"slept": float(spec.params["sleep"])})


def with_launcher(raw: dict[str, Any], kind: str, **launcher: Any) -> dict[str, Any]:
    return {**raw, "launcher": {"type": kind, "device": "cpu", **launcher}}


# -- checks, each run by test_multiprocess.py and test_ray.py --------------------------------


def check_concurrent_trials_match_local(raw: dict[str, Any], kind: str, **launcher: Any) -> None:
    import optuna

    cfg = parse_config(with_launcher(raw, kind, max_concurrent=2, **launcher))
    study = run_study(cfg, trial_fn=timed_trial, log=lambda line: None)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, [
        t.user_attrs.get("error") for t in trials
    ]
    a, b = (t.user_attrs for t in trials)
    assert a["pid"] != b["pid"]  # two workers ...
    assert a["t_start"] < b["t_end"] and b["t_start"] < a["t_end"]  # ... at the same time
    local = make_launcher("local")
    for t in trials:
        local.submit(run_trial, TrialSpec(t.number, t.user_attrs["params"], cfg.context()))
        (mine,) = local.wait()
        assert mine.state == "complete", mine.error
        for name in QUALITY:
            assert t.user_attrs[name] == mine.metrics[name], (name, t.number)


def check_killed_worker_fails_its_trial(raw: dict[str, Any], kind: str, **launcher: Any) -> None:
    import optuna

    raw = {**raw, "study": {**raw["study"], "n_trials": 3}}
    cfg = parse_config(with_launcher(raw, kind, max_concurrent=2, **launcher))
    study = run_study(cfg, trial_fn=killed_on_trial_1, log=lambda line: None)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {  # the lost trial is replaced: the run still ends with n_trials done
        0: optuna.trial.TrialState.COMPLETE,
        1: optuna.trial.TrialState.FAIL,
        2: optuna.trial.TrialState.COMPLETE,
        3: optuna.trial.TrialState.COMPLETE,
    }
    error = study.trials[1].user_attrs["error"]
    assert error.startswith("worker lost: the process running this trial died"), error
    assert "accuracy" in study.trials[2].user_attrs  # the replacement worker trained it


def check_retry_after_death(launcher: BaseLauncher, tmp_path: Path) -> None:
    spec = TrialSpec(0, {}, {"marker": str(tmp_path / "marker")})
    launcher.submit(dies_once, spec)
    (result,) = launcher.wait()
    assert result.state == "complete", result.error
    assert (tmp_path / "marker").exists()


def check_cancel_keeps_finished(launcher: BaseLauncher) -> None:
    launcher.submit(sleeps, TrialSpec(0, {"sleep": 0.0}, {}))
    launcher.submit(sleeps, TrialSpec(1, {"sleep": 120.0}, {}))
    (first,) = launcher.wait()
    assert first.number == 0 and first.state == "complete"
    launcher.submit(sleeps, TrialSpec(2, {"sleep": 0.0}, {}))
    time.sleep(3.0)  # trial 2 finishes; Ctrl-C comes before the engine waits again
    start = time.perf_counter()
    results = {r.number: r for r in launcher.cancel()}
    assert time.perf_counter() - start < 10
    assert results[2].state == "complete"  # finished before the cancel: not lost
    assert results[1].state == "fail" and (results[1].error or "").startswith("cancelled")


class _CtrlC(BaseLauncher):
    """Wraps a launcher; Ctrl-C arrives during the second wait, a while after it starts."""

    def __init__(self, inner: BaseLauncher) -> None:
        self.inner, self.max_concurrent, self.waits = inner, inner.max_concurrent, 0

    def submit(self, fn: Any, spec: TrialSpec) -> None:
        self.inner.submit(fn, spec)

    def wait(self) -> list[TrialResult]:
        self.waits += 1
        if self.waits == 2:
            time.sleep(3.0)
            raise KeyboardInterrupt
        return self.inner.wait()

    def cancel(self) -> list[TrialResult]:
        return self.inner.cancel()

    def close(self) -> None:
        self.inner.close()


def check_ctrl_c_records_and_resumes(raw: dict[str, Any], kind: str, **launcher: Any) -> None:
    import optuna
    import pytest

    raw = {**raw, "study": {**raw["study"], "n_trials": 4}}
    cfg = parse_config(with_launcher(raw, kind, max_concurrent=2, **launcher))
    inner = make_launcher(kind, **cfg.launcher.options())
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, launcher=_CtrlC(inner), trial_fn=stalls_on_trial_1, log=lambda line: None)
    C, F = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: C, 1: F, 2: C}  # trial 2 ended before Ctrl-C: kept
    assert study.trials[1].user_attrs["error"].startswith("cancelled")
    study = run_study(cfg, trial_fn=instant, log=lambda line: None)  # re-running resumes
    assert sum(t.state == C for t in study.get_trials()) == 4
    assert len(study.get_trials()) == 5


def visible_gpu(spec: TrialSpec) -> TrialResult:
    time.sleep(0.5)  # long enough that the next trial goes to the other worker
    return TrialResult(spec.number, "complete", {"gpu": float(os.environ["CUDA_VISIBLE_DEVICES"])})


def check_more_in_flight_than_workers(launcher: BaseLauncher) -> None:
    """max_concurrent above what the workers hold: the extra trials wait, none is lost."""
    assert launcher.max_concurrent == 4
    for n in range(4):
        launcher.submit(sleeps, TrialSpec(n, {"sleep": 0.3}, {}))
    done: list[TrialResult] = []
    while len(done) < 4:
        done += launcher.wait()
    assert sorted(r.number for r in done) == [0, 1, 2, 3]
    assert all(r.state == "complete" for r in done)
