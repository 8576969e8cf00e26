"""Opening the study's storage: one-line errors, masked passwords, heartbeats.

Only drivers write the storage (``open_storage(url, create=True)``); ``front``, ``export``,
``plot`` and ``dashboard`` only read it (``create=False``): they never create a database.
Every storage is an Optuna ``RDBStorage`` (SQLite, PostgreSQL, MySQL). Trials carry Optuna's
heartbeat, so that a driver fails only the trials whose driver is gone (``fail_stale``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretune.errors import ConfigError, ParetuneError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "HEARTBEAT_KEY", "Heartbeat", "StorageLost", "asking", "checkpoint_sqlite", "describe",
    "fail_stale", "mask_url", "open_storage", "sqlite_path", "storage_hint",
]

HEARTBEAT_KEY = "paretune.heartbeat"  # trial system attr: the trial's heartbeat is recorded
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")
_RACE = ("already exists", "duplicate", "unique constraint", "database is locked")
_DRIVERS = {  # SQLAlchemy dialect -> what to install
    "psycopg": "pip install 'psycopg[binary]' (or pip install 'paretune[postgres]')",
    "psycopg2": "pip install psycopg2-binary",
    "mysqldb": "pip install mysqlclient, or write mysql+pymysql:// after pip install pymysql",
    "pymysql": "pip install pymysql",
}
_EXAMPLES = "sqlite:///paretune.db, postgresql://USER:PASSWORD@HOST:5432/DB or mysql://..."


class StorageLost(ParetuneError):
    """The storage stopped accepting reads or writes in the middle of a run."""


def mask_url(url: str) -> str:
    """``postgresql://u:***@host/db``: the URL as it may be printed or written anywhere."""
    return _PASSWORD.sub(lambda m: m.group("head") + "***@", str(url))


def describe(exc: BaseException, url: str = "") -> str:
    """The root cause of a storage error on one line, without the URL's password."""
    while exc.__cause__ is not None or getattr(exc, "orig", None) is not None:
        exc = getattr(exc, "orig", None) or exc.__cause__  # type: ignore[assignment]
    text = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
    text = re.sub(r"\s*\(Background on this error at: [^)]*\)", "", text)
    password = _PASSWORD.search(url)
    if password and password.group("pw"):
        text = text.replace(password.group("pw"), "***")
    return mask_url(text)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?")[0]
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        return None
    return Path(path)


def asking(url: str, storage: Any = None) -> contextlib.AbstractContextManager[Any]:
    """Held while a driver enqueues or asks for trials, so that the drivers of one study take
    turns at it.

    - Optuna claims an enqueued trial by reading it WAITING and writing it RUNNING. A
      database with row locks makes that one step; SQLite has none, so two drivers asking at
      once could both claim one enqueued trial (an anchor) and run it twice.
    - Drivers that start together each see a study with no trials yet, and each would
      enqueue the anchors.

    SQLite: a file lock in the system's temporary directory, named by the database's path
    (its drivers share one machine: SQLite is not safe over network file systems).
    PostgreSQL: an advisory lock named by the study's URL, on a connection of ``storage``'s
    own engine. Other databases: row locks keep the claim safe; drivers that start in the
    same instant may enqueue the anchors twice."""
    path = sqlite_path(url)
    if path is not None:
        from filelock import FileLock

        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return FileLock(str(Path(tempfile.gettempdir()) / f"paretune-ask-{key}.lock"))
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        return _advisory_lock(engine, url)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _advisory_lock(engine: Any, name: str) -> Iterator[None]:
    from sqlalchemy import text

    key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)  # a positive bigint
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


class _WalConnection(sqlite3.Connection):
    """A SQLite connection in WAL mode with ``synchronous=NORMAL``.

    The default (rollback journal, ``synchronous=FULL``) syncs the disk several times per
    commit, and Optuna commits every suggested knob and user attribute on its own: on a
    slow virtual disk that alone cost ~100 ms per trial. WAL with NORMAL syncs only at
    checkpoints; the database cannot be corrupted, and only a power loss (not a crash of
    paretune) can lose the last commits. Readers (optuna-dashboard, ``paretune front``)
    do not block the writer. ``checkpoint_sqlite`` leaves the file out of WAL at the end.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if os.path.abspath(args[0]) not in _CHECKPOINTED:
            self.execute("PRAGMA journal_mode=WAL")
            self.execute("PRAGMA synchronous=NORMAL")


# Files this process took out of WAL at the end of a run: reading the study afterwards
# (the CLI prints the front) must not put them back into WAL mode.
_CHECKPOINTED: set[str] = set()


def _check_sqlite_file(url: str, path: Path, create: bool, what: str) -> None:
    """A missing, unwritable or misplaced SQLite file, found before SQLite sees it."""
    shown = mask_url(url)
    if path.is_dir():
        raise ConfigError(f"{what} {shown!r} is a directory; give a file, e.g. sqlite:///{path}"
                          "/paretune.db.")
    if not create:
        if not path.is_file():
            raise ConfigError(
                f"{what} {shown!r}: the file {str(path)!r} does not exist; give the storage a "
                "study was run with (study.storage in its config)."
            )
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(
            f"{what} {shown!r}: the directory {str(parent)!r} does not exist; create it "
            "or point study.storage at an existing directory."
        )
    for target in (path, parent) if path.exists() else (parent,):
        if not os.access(target, os.W_OK):
            raise ConfigError(
                f"{what} {shown!r}: {str(target)!r} is not writable (read-only "
                "file system or no permission); a study needs a writable directory."
            )


def _check_dialect(url: str, what: str) -> None:
    """Unknown database kinds and missing database drivers, named with what to install."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    shown = mask_url(url)
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:  # before ArgumentError: it is one
        kind = url.split("://", 1)[0]
        raise ConfigError(
            f"{what} {shown!r}: unknown database kind {kind!r}; give a URL like {_EXAMPLES}."
        ) from None
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"{what} {shown!r} is not a storage URL; give one like {_EXAMPLES}."
                          ) from None
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = parsed.get_driver_name()
        hint = _DRIVERS.get(driver, f"install the {driver} package")
        raise ConfigError(
            f"{what} {shown!r} needs the database driver {driver!r}, which is not "
            f"installed: {hint}."
        ) from None


def _engine_kwargs(url: str, create: bool) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # a writer waits up to 30 s for another driver's commit instead of failing at once
        args: dict[str, Any] = {"timeout": 30}
        if create and sqlite_path(url) is not None:
            args["factory"] = _WalConnection
        return {"connect_args": args}
    if url.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": 10}}  # an unreachable host answers fast
    return {}


def open_storage(
    url: str, *, create: bool, heartbeat_interval: int | None = None,
    grace_period: int | None = None, what: str = "study.storage",
) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``url``. ``create``: the driver's (tables made, heartbeat on);
    otherwise a reader's, which never creates a file or a table. Errors are one line."""
    import optuna
    import sqlalchemy.exc

    shown = mask_url(url)
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"{what} {shown!r} is not a storage URL; give one like {_EXAMPLES} (Optuna's "
            "journal files are not supported: several drivers need the heartbeat of a database)."
        )
    path = sqlite_path(url)
    if path is not None:
        _check_sqlite_file(url, path, create, what)
        if create:
            _CHECKPOINTED.discard(os.path.abspath(path))
    _check_dialect(url, what)
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(url, create)}
    if create:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    else:
        kwargs.update(skip_table_creation=True, skip_compatibility_check=True)
    for attempt in range(8):
        try:
            with _quiet_optuna_warnings():
                storage = optuna.storages.RDBStorage(url, **kwargs)
            if not create:
                storage.get_all_studies()  # a file that is not an Optuna database fails here
            return storage
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            reason = describe(exc, url)
            # several drivers creating one database at once: the loser of the race retries
            if create and attempt < 7 and any(r in reason.lower() for r in _RACE):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(f"{what} {shown!r} cannot be opened: {reason}{storage_hint(reason)}"
                              ) from None
        except (ValueError, ImportError, OSError) as exc:
            raise ConfigError(f"{what} {shown!r} cannot be opened: {describe(exc, url)}"
                              ) from None
    raise AssertionError("unreachable")


def storage_hint(reason: str) -> str:
    low = reason.lower()
    if "no such table" in low:
        return " (the file is not an Optuna study database)"
    if "full" in low:
        return "; free disk space, or point study.storage at another disk"
    if "readonly" in low or "read-only" in low:
        return "; the study needs a writable file and directory"
    if "connect" in low or "timeout" in low or "resolve" in low or "authentication" in low:
        return "; check the host, port, user and password, and that the server is running"
    return ""


class _quiet_optuna_warnings:
    """Optuna marks the heartbeat arguments experimental; that is no news to a user."""

    def __enter__(self) -> None:
        import warnings

        import optuna

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def checkpoint_sqlite(url: str, storage: Any = None) -> None:
    """Leave a SQLite study out of WAL mode (one file, readable from read-only media).

    Needs the only open connection: while another driver or a dashboard still has the file
    open, it is left in WAL mode and the last one to finish checkpoints it.
    """
    path = sqlite_path(url)
    if path is None or not path.is_file():
        return
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is not None:
        engine.dispose()
    _CHECKPOINTED.add(os.path.abspath(path))
    try:
        con = sqlite3.connect(path, timeout=0.5)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode=DELETE")
        finally:
            con.close()
    except sqlite3.Error:
        pass


class Heartbeat:
    """Records the heartbeat of this driver's running trials every ``interval`` seconds.

    One thread for the whole driver, so a trial that runs in this process (the local
    launcher) or far away (Ray) beats the same way. A failed write is tried again at the
    next beat: a busy database must not stop the search.
    """

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paretune-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        """Start beating for a new trial; its first beat is recorded before this returns."""
        self.storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001  (tried again at the next beat)
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def fail_stale(study: optuna.Study, storage: Any, reason: str, grace_period: float) -> list[int]:
    """Fail the study's RUNNING trials whose driver is gone; return their numbers.

    A trial is stale when Optuna's heartbeat of it is older than the grace period (the
    database's own clock decides, so machines' clocks may differ), or when it never got a
    heartbeat (its driver died right after asking for it, or an older paretune ran it) and
    started more than the grace period ago. The reason is written before the state, and a
    trial that another driver fails at the same moment is left to it.
    """
    import datetime

    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    stale = set(storage._get_stale_trial_ids(study._study_id))  # Optuna's heartbeat API
    now = datetime.datetime.now()
    for t in running:
        if HEARTBEAT_KEY not in t.system_attrs and t.datetime_start is not None:
            if (now - t.datetime_start).total_seconds() > grace_period:
                stale.add(t._trial_id)
    failed = []
    for t in running:
        if t._trial_id not in stale:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", reason)
            if storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                failed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile, by its own driver or another one
    return failed
