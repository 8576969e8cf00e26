"""The study storage: WAL while a driver writes, one file at the end; masked passwords;
every URL mistake is one line that says what to fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from paretune.errors import ConfigError
from paretune.search import load_study, open_study, parse_config, run_study
from paretune.search._storage import describe, mask_url, open_storage
from paretune.trial import TrialResult, TrialSpec


def quick(spec: TrialSpec) -> TrialResult:
    lr = spec.params["train.lr"]
    return TrialResult(spec.number, "complete", {"accuracy": lr * 100, "size_mb": 1 / lr})


def _mode(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        con.close()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a bare ask, as Optuna's
def test_sqlite_is_in_wal_mode_while_driven_and_one_plain_file_after(
    raw_config: dict[str, Any],
) -> None:
    import optuna

    cfg = parse_config(raw_config)
    path = Path(cfg.study.storage.removeprefix("sqlite:///"))
    study = open_study(cfg)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, [0.5, 1.0])
    assert _mode(path) == "wal"
    study._storage._backend.engine.dispose()  # this driver is done; the next one finishes
    run_study(cfg, trial_fn=quick, log=lambda line: None)
    assert _mode(path) == "delete"  # checkpointed: no -wal file needed to read it
    assert not Path(f"{path}-wal").exists()
    again = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    assert len(again.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    assert _mode(path) == "delete"  # reading it did not put it back into WAL


@pytest.mark.parametrize("url,masked", [
    ("postgresql://u:SECRET@host/db", "postgresql://u:***@host/db"),
    ("postgresql+psycopg://u:p%40ss@host:5432/db?sslmode=require",
     "postgresql+psycopg://u:***@host:5432/db?sslmode=require"),
    ("mysql://root:@host/db", "mysql://root:***@host/db"),
    ("postgresql://u@host/db", "postgresql://u@host/db"),  # no password: unchanged
    ("sqlite:///a/b.db", "sqlite:///a/b.db"),
    ("cannot open postgresql://u:SECRET@h/d (x)", "cannot open postgresql://u:***@h/d (x)"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_describe_drops_a_password_the_driver_echoes() -> None:
    exc = RuntimeError('connection to "h" failed for password SECRET')
    assert describe(exc, "postgresql://u:SECRET@h/d") == (
        'connection to "h" failed for password ***'
    )


@pytest.mark.parametrize("url,create,words", [
    ("foo://bar", True, ["unknown database kind 'foo'", "sqlite:///"]),
    ("not a url", True, ["is not a storage URL", "journal files are not supported"]),
    ("journal.log", False, ["is not a storage URL"]),
    ("mysql://u:SECRET@h/d", True, ["needs the database driver 'mysqldb'", "pip install"]),
    ("postgresql://u:SECRET@127.0.0.1:9/d", True, ["cannot be opened", "refused",
                                                   "check the host"]),
    ("sqlite:////no/such/dir/x.db", True, ["the directory '/no/such/dir' does not exist"]),
    ("sqlite:///{tmp}/missing.db", False, ["does not exist"]),
    ("sqlite:///{tmp}", True, ["is a directory"]),
])
def test_bad_storage_is_one_line_naming_the_fix(
    url: str, create: bool, words: list[str], tmp_path: Path
) -> None:
    url = url.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as info:
        open_storage(url, create=create)
    text = str(info.value)
    assert "\n" not in text and "SECRET" not in text
    for word in words:
        assert word in text
    assert list(tmp_path.iterdir()) == []  # nothing created, not even for a reader


def test_a_file_that_is_not_a_study_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    sqlite3.connect(path).execute("CREATE TABLE notes (x)").connection.commit()
    with pytest.raises(ConfigError, match="not an Optuna study database"):
        load_study("x", f"sqlite:///{path}")


def test_readers_never_create_a_database(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_study("x", f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
