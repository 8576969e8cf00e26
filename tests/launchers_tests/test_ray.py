"""The Ray launcher on a real local Ray instance (2 CPUs): concurrency, equal metrics, lost
workers, Ctrl-C. Skipped where Ray is not installed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import _launcher_checks  # noqa: E402

from paretune.launchers.ray import RayLauncher  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    from ray import cloudpickle

    # Ray's workers may not have this test folder on sys.path: ship the helpers by value
    cloudpickle.register_pickle_by_value(_launcher_checks)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(_launcher_checks)


def test_two_concurrent_trials_complete_with_the_local_metrics(raw_config: dict[str, Any]) -> None:
    _launcher_checks.check_concurrent_trials_match_local(raw_config, "ray")


def test_killed_worker_fails_its_trial_and_the_study_goes_on(raw_config: dict[str, Any]) -> None:
    _launcher_checks.check_killed_worker_fails_its_trial(raw_config, "ray")


def test_ctrl_c_records_running_trials_and_rerun_resumes(raw_config: dict[str, Any]) -> None:
    _launcher_checks.check_ctrl_c_records_and_resumes(raw_config, "ray")


def test_retry_reruns_a_trial_whose_worker_died(tmp_path: Path) -> None:
    with RayLauncher(retries=1) as launcher:
        _launcher_checks.check_retry_after_death(launcher, tmp_path)


def test_cancel_keeps_finished_trials_and_stops_the_rest() -> None:
    with RayLauncher() as launcher:
        _launcher_checks.check_cancel_keeps_finished(launcher)


def test_concurrency_fits_the_cluster_and_gpus_need_gpus() -> None:
    from paretune.errors import ConfigError

    assert RayLauncher().max_concurrent == 2  # 2 CPUs, 1 CPU per trial
    assert RayLauncher(cpus_per_trial=2).max_concurrent == 1
    assert RayLauncher(max_concurrent=5).max_concurrent == 5
    assert RayLauncher().gpus_per_trial == 0  # no GPUs here
    with pytest.raises(ConfigError, match="gpus_per_trial is 0.25, but this Ray instance has no"):
        RayLauncher(gpus_per_trial=0.25)


def test_more_trials_in_flight_than_the_cluster_holds_all_finish() -> None:
    with RayLauncher(max_concurrent=4) as launcher:  # 2 CPUs: two actors, two trials wait
        _launcher_checks.check_more_in_flight_than_workers(launcher)
