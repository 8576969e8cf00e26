"""Opening the study's storage for the driver, the one process that writes it."""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = ["driver_storage"]


class _WalConnection(sqlite3.Connection):
    """A SQLite connection in WAL mode with ``synchronous=NORMAL``.

    The default (rollback journal, ``synchronous=FULL``) syncs the disk several times per
    commit, and Optuna commits every suggested knob and user attribute on its own: on a
    slow virtual disk that alone cost ~100 ms per trial. WAL with NORMAL syncs only at
    checkpoints; the database cannot be corrupted, and only a power loss (not a crash of
    paretune) can lose the last commits. Readers (optuna-dashboard, ``paretune front``)
    do not block the writer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def driver_storage(url: str) -> Any:
    """What ``optuna.create_study(storage=...)`` gets: the URL as it is, or for a SQLite
    file an ``RDBStorage`` whose connections are in WAL mode (see ``_WalConnection``)."""
    if not url.startswith("sqlite:///") or url.rstrip("/") == "sqlite:" or ":memory:" in url:
        return url
    import optuna

    return optuna.storages.RDBStorage(
        url, engine_kwargs={"connect_args": {"factory": _WalConnection}}
    )
