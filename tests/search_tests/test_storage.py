"""The driver's SQLite storage runs in WAL mode; other URLs pass through untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from paretune.search import open_study, parse_config
from paretune.search._storage import driver_storage


def test_sqlite_study_is_in_wal_mode_and_readable_by_plain_optuna(
    raw_config: dict[str, Any], tmp_path: Path
) -> None:
    import optuna

    cfg = parse_config(raw_config)
    study = open_study(cfg)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, [0.5, 1.0])
    path = cfg.study.storage.removeprefix("sqlite:///")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    assert [t.values for t in again.trials] == [[0.5, 1.0]]


def test_other_storages_are_left_as_given() -> None:
    for url in ("postgresql://u:p@db/paretune", "sqlite:///:memory:", "mysql://db/x"):
        assert driver_storage(url) == url
