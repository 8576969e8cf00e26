"""Several drivers on one study, as Optuna scales a study: separate ``paretune run``
processes (fake trials, everything else real) on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from _procs import drop_study, finish, paretune, postgres_url, start, wait_for, write_config

from paretune.search._engine import INTERRUPTED

COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(storage URL, study name), dropped afterwards on a shared server."""
    name = f"drivers-{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}", name
        return
    url = postgres_url()
    yield url, name
    drop_study(url, name)


def _states(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _password(url: str) -> str | None:
    rest = url.split("://", 1)[1]
    creds = rest.split("@", 1)[0] if "@" in rest else ""
    return creds.split(":", 1)[1] if ":" in creds else None


def test_four_drivers_share_one_study(
    storage: tuple[str, str], tmp_path: Path, tiny_csv: str, tiny_model: str
) -> None:
    url, name = storage
    config = write_config(tmp_path, url, tiny_csv, tiny_model, name=name, n_trials=16)
    drivers = [start(config) for _ in range(4)]
    outcomes = [finish(d) for d in drivers]
    for rc, _out, err in outcomes:
        assert rc == 0, err
        assert "Traceback" not in err
    trials = _states(url, name)
    complete = [t for t in trials if t.state == COMPLETE]
    assert 16 <= len(complete) <= 16 + 4 - 1  # trials in flight when the count was reached
    assert [t.number for t in trials if t.state in (FAIL, RUNNING)] == []
    anchors = [str(sorted(t.system_attrs["fixed_params"].items())) for t in trials
               if "fixed_params" in t.system_attrs]
    assert len(anchors) >= 3 and len(set(anchors)) == len(anchors)  # each enqueued once
    secret = _password(url)
    if secret:  # the password is in no output of any driver
        assert all(secret not in out + err for _, out, err in outcomes)
        assert any("***@" in out for _, out, _ in outcomes)


def test_a_killed_driver_s_trial_is_failed_by_a_survivor_and_replaced(
    storage: tuple[str, str], tmp_path: Path, tiny_csv: str, tiny_model: str
) -> None:
    url, name = storage
    config = write_config(tmp_path, url, tiny_csv, tiny_model, name=name, n_trials=6,
                          grace_period=3)
    started = tmp_path / "started"
    started.mkdir()
    survivor = start(config, FAKE_TRIAL_S="0.5")
    doomed = start(config, FAKE_SLOW_FROM="0", FAKE_STARTED=str(started))
    wait_for(lambda: any(started.iterdir()), "a trial of the second driver starting")
    number = int(next(started.iterdir()).name.split("-")[1])
    doomed.kill()  # kill -9: no chance to record anything
    doomed.wait()
    rc, out, err = finish(survivor)
    assert rc == 0, err
    trials = {t.number: t for t in _states(url, name)}
    assert trials[number].state == FAIL
    assert trials[number].user_attrs["error"] == INTERRUPTED
    assert f"trial {number} FAILED: {INTERRUPTED}" in err  # the survivor did it
    assert sum(t.state == COMPLETE for t in trials.values()) == 6  # and replaced it
    assert not [t for t in trials.values() if t.state == RUNNING]


def test_sigterm_records_the_running_trial_as_cancelled_and_keeps_completed(
    tmp_path: Path, tiny_csv: str, tiny_model: str
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = write_config(tmp_path, url, tiny_csv, tiny_model, n_trials=6, anchors=False)
    started = tmp_path / "started"
    started.mkdir()
    driver = start(config, FAKE_SLOW_FROM="2", FAKE_STARTED=str(started))
    wait_for(lambda: any(p.name.endswith("-2") for p in started.iterdir()), "trial 2 starting")
    os.kill(driver.pid, signal.SIGTERM)
    rc, out, err = finish(driver, timeout=30)
    assert rc == 143, err
    assert err.strip().splitlines()[-1] == (
        "paretune: stopped by SIGTERM; completed trials are stored, re-run to resume."
    )
    trials = _states(url, "drivers")
    assert [t.state for t in trials] == [COMPLETE, COMPLETE, FAIL]
    assert trials[2].user_attrs["error"].startswith("cancelled: the search was stopped (SIGTERM)")
    # the cancelled trial was the run's, not the trial's: a re-run replaces it
    again = start(config, "study.n_trials=3")
    rc, out, err = finish(again)
    assert rc == 0, err
    assert [t.state for t in _states(url, "drivers")] == [COMPLETE, COMPLETE, FAIL, COMPLETE]


def test_read_only_commands_on_a_shared_study_mask_the_password(
    tmp_path: Path, tiny_csv: str, tiny_model: str
) -> None:
    url = postgres_url()
    name = f"masked-{uuid.uuid4().hex[:8]}"
    secret = _password(url)
    assert secret, f"the test server's URL should carry a password: {url.split('@')[-1]}"
    try:
        config = write_config(tmp_path, url, tiny_csv, tiny_model, name=name, n_trials=2)
        rc, out, err = finish(start(config))
        assert rc == 0, err
        results = [
            paretune("front", "--study", name, "--storage", url),
            paretune("export", "--study", name, "--storage", url, "--front", "-o",
                     str(tmp_path / "recipes")),
            paretune("front", "--study", "nope", "--storage", url),
            paretune("front", "--study", name, "--storage", url.replace(secret, "wrong-pw")),
        ]
        assert [r.returncode for r in results] == [0, 0, 2, 2]
        for r in [*results]:
            assert secret not in r.stdout + r.stderr and "wrong-pw" not in r.stderr
        assert "password authentication failed" in results[3].stderr
        assert "***@" in results[3].stderr and results[3].stderr.count("\n") == 1
        for recipe in (tmp_path / "recipes").iterdir():
            assert secret not in recipe.read_text()
        recipe = sorted((tmp_path / "recipes").iterdir())[0]
        made = paretune("materialize", str(recipe), "-o", str(tmp_path / "model"))
        assert made.returncode == 0, made.stderr
        assert secret not in made.stdout + made.stderr
        written = [f for f in (tmp_path / "model").rglob("*")
                   if f.is_file() and f.suffix in (".md", ".json", ".yaml", ".txt")]
        assert any(f.name == "README.md" for f in written)  # the model card
        assert all(secret not in f.read_text(errors="replace") for f in written)
        assert secret not in out + err
        banner = _dashboard_banner(url)
        assert "***@" in banner and secret not in banner
    finally:
        drop_study(url, name)


def _dashboard_banner(url: str) -> str:
    """What ``paretune dashboard`` prints before it serves (the server itself not started)."""
    import contextlib
    import io

    pytest.importorskip("optuna_dashboard")
    import optuna_dashboard

    from paretune.search._dashboard import serve

    err = io.StringIO()
    real = optuna_dashboard.run_server
    optuna_dashboard.run_server = lambda *args, **kwargs: None
    try:
        with contextlib.redirect_stderr(err):
            serve(url, port=8099)
    finally:
        optuna_dashboard.run_server = real
    return err.getvalue()


_CLAIM = """
import sys, optuna
from paretune.search._storage import asking
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, name = sys.argv[1:]
study = optuna.load_study(study_name=name, storage=url)
while True:
    with asking(url, study._storage):
        trial = study.ask()
    if "fixed_params" not in study._storage.get_trial_system_attrs(trial._trial_id):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        break
    print(trial.number, flush=True)
    study.tell(trial, 1.0)
"""


def test_drivers_asking_at_once_claim_each_enqueued_trial_once(
    storage: tuple[str, str], tmp_path: Path
) -> None:
    """Optuna claims an enqueued trial by reading it WAITING, then writing it RUNNING; on
    SQLite (no row locks) two processes asking at once took the same one (without
    ``asking``, this test's processes crash telling a trial another already told)."""
    import subprocess
    import sys

    from _procs import env

    url, name = storage
    study = optuna.create_study(study_name=name, storage=url)
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM, url, name], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    claimed = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        claimed += [int(line) for line in out.split()]
    assert sorted(claimed) == list(range(40))  # every enqueued trial, each by one process
