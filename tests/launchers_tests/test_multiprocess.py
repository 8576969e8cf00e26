"""The multiprocess launcher on 2 CPU workers: concurrency, equal metrics, lost workers, Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _launcher_checks

from paretune.launchers.multiprocess import MultiprocessLauncher
from paretune.trial import TrialSpec


def test_two_concurrent_trials_complete_with_the_local_metrics(raw_config: dict[str, Any]) -> None:
    _launcher_checks.check_concurrent_trials_match_local(raw_config, "multiprocess", workers=2)


def test_killed_worker_fails_its_trial_and_the_study_goes_on(raw_config: dict[str, Any]) -> None:
    _launcher_checks.check_killed_worker_fails_its_trial(raw_config, "multiprocess", workers=2)


def test_ctrl_c_records_running_trials_and_rerun_resumes(raw_config: dict[str, Any]) -> None:
    _launcher_checks.check_ctrl_c_records_and_resumes(raw_config, "multiprocess", workers=2)


def test_retry_reruns_a_trial_whose_worker_died(tmp_path: Path) -> None:
    with MultiprocessLauncher(retries=1, workers=1, device="cpu") as launcher:
        _launcher_checks.check_retry_after_death(launcher, tmp_path)


def test_cancel_keeps_finished_trials_and_stops_the_rest() -> None:
    with MultiprocessLauncher(workers=2, device="cpu") as launcher:
        _launcher_checks.check_cancel_keeps_finished(launcher)


def test_more_trials_in_flight_than_workers_all_finish() -> None:
    with MultiprocessLauncher(max_concurrent=4, workers=2, device="cpu") as launcher:
        _launcher_checks.check_more_in_flight_than_workers(launcher)


def test_each_worker_sees_its_own_gpu(monkeypatch: Any) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    launcher = MultiprocessLauncher(workers=4)
    assert launcher._gpus == ["3", "5", "3", "5"]  # round-robin: two workers per GPU
    assert launcher.max_concurrent == 4
    assert MultiprocessLauncher()._gpus == ["3", "5"]  # default: one worker per GPU
    assert MultiprocessLauncher(device="cpu")._gpus == [None]
    with MultiprocessLauncher() as launcher:
        for n in range(2):
            launcher.submit(_launcher_checks.visible_gpu, TrialSpec(n, {}, {}))
        seen = launcher.wait() + launcher.wait()
    assert sorted(r.metrics["gpu"] for r in seen) == [3.0, 5.0]
