"""A storage that cannot be written: one line and exit 2 before the study, or a clean stop
with every recorded trial intact in the middle of it. Read-only commands create nothing.

The read-only and full file systems are real tmpfs mounts where this runs as root (CI);
elsewhere those tests skip, and a failing write is simulated instead."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from paretune.cli import main
from paretune.trial import TrialResult, TrialSpec

COMPLETE = optuna.trial.TrialState.COMPLETE


def quick(spec: TrialSpec) -> TrialResult:
    lr = spec.params["train.lr"]
    return TrialResult(spec.number, "complete", {"accuracy": 0.5 + 100 * lr, "size_mb": 1 / lr})


def _mount(where: Path, options: str) -> None:
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system: room for a study database, its write-ahead log, a few trials."""
    where = tmp_path / "small"
    _mount(where, "size=2m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    _mount(where, "ro,size=64k")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _config(raw: dict[str, Any], tmp_path: Path, storage: str) -> str:
    raw["study"]["storage"] = storage
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _fake_trials(monkeypatch: pytest.MonkeyPatch, trial_fn: Any = quick) -> None:
    from paretune import search

    real = search.run_study
    monkeypatch.setattr(search, "run_study", lambda cfg, **kw: real(cfg, trial_fn=trial_fn, **kw))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The error: one line, the last one (progress lines of a run may come before it)."""
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("paretune:")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert errors[0].startswith("paretune: error: ")
    return errors[0]


def test_study_on_a_read_only_file_system(
    raw_config: dict[str, Any], tmp_path: Path, read_only_fs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(raw_config, tmp_path, f"sqlite:///{read_only_fs / 'study.db'}")
    assert main(["run", config]) == 2
    line = _one_line(capsys)
    assert f"{str(read_only_fs)!r} is not writable (read-only file system" in line
    assert list(read_only_fs.iterdir()) == []


def test_study_that_cannot_be_created_on_a_full_disk(
    raw_config: dict[str, Any], tmp_path: Path, small_fs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    filler = small_fs / "filler"
    _fill(filler)
    config = _config(raw_config, tmp_path, f"sqlite:///{small_fs / 'study.db'}")
    assert main(["run", config]) == 2
    line = _one_line(capsys)
    assert "cannot be opened: database or disk is full; free disk space" in line


def _fill(path: Path) -> None:
    """Write until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_disk_full_in_the_middle_of_a_study_stops_cleanly(
    raw_config: dict[str, Any], tmp_path: Path, small_fs: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    filler = small_fs / "filler"

    def fills_the_disk_at_trial_2(spec: TrialSpec) -> TrialResult:
        if spec.number == 2:
            _fill(filler)
        return quick(spec)

    _fake_trials(monkeypatch, fills_the_disk_at_trial_2)
    storage = f"sqlite:///{small_fs / 'study.db'}"
    raw_config["study"]["n_trials"] = 5
    assert main(["run", _config(raw_config, tmp_path, storage)]) == 1
    line = _one_line(capsys)
    # SQLite may still fit trial 2 in its write-ahead log: the next write is the one refused
    assert "stopped accepting writes while " in line
    assert "database or disk is full" in line and "re-run to resume" in line
    filler.unlink()
    study = optuna.load_study(study_name="t", storage=storage)
    done = study.get_trials(states=(COMPLETE,))
    assert [t.number for t in done][:2] == [0, 1]  # completed before the disk filled: kept
    for t in done:
        assert t.user_attrs["accuracy"] == quick(TrialSpec(t.number, t.params, {})).metrics[
            "accuracy"]


def test_a_write_failing_mid_study_stops_cleanly_simulated(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same stop on any machine: the storage refuses to record trial 2."""
    from paretune.search import _engine

    real = _engine.tell_result

    def refuses_trial_2(study: Any, trial: Any, result: Any, cfg: Any) -> str:
        if result.number == 2:
            raise optuna.exceptions.StorageInternalError("disk I/O error")
        return real(study, trial, result, cfg)

    monkeypatch.setattr(_engine, "tell_result", refuses_trial_2)
    _fake_trials(monkeypatch)
    raw_config["study"]["n_trials"] = 5
    assert main(["run", _config(raw_config, tmp_path, raw_config["study"]["storage"])]) == 1
    line = _one_line(capsys)
    assert "stopped accepting writes while recording trial 2: disk I/O error" in line
    study = optuna.load_study(study_name="t", storage=raw_config["study"]["storage"])
    assert [t.state for t in study.trials[:2]] == [COMPLETE, COMPLETE]


@pytest.mark.parametrize("command", [
    ["front", "--study", "t"],
    ["export", "--study", "t", "-o", "x.yaml"],
    ["plot", "--study", "t", "--kind", "pareto", "-o", "x.png"],
    ["dashboard"],
])
def test_read_only_commands_never_create_a_database(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing.db"
    assert main([*command, "--storage", f"sqlite:///{missing}"]) == 2
    line = _one_line(capsys)
    assert f"the file {str(missing)!r} does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_read_only_commands_work_on_read_only_media(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finished study is one file (out of WAL): it reads from a read-only mount."""
    _fake_trials(monkeypatch)
    assert main(["run", _config(raw_config, tmp_path, raw_config["study"]["storage"])]) == 0
    media = tmp_path / "media"
    _mount(media, "size=1m")
    try:
        shutil.copy(raw_config["study"]["storage"].removeprefix("sqlite:///"), media / "s.db")
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        capsys.readouterr()
        assert main(["front", "--study", "t", "--storage", f"sqlite:///{media / 's.db'}"]) == 0
        assert "Pareto front of study 't'" in capsys.readouterr().out
    finally:
        subprocess.run(["umount", "-l", str(media)], check=False)
