"""Helpers of the tests that run ``paretune`` as separate processes (``_driver.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("_driver.py")
POSTGRES_ENV = "PARETUNE_TEST_POSTGRES"


def env(**extra: str) -> dict[str, str]:
    """This environment, with the checkout first on the path (the tests' paretune)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [out.get("PYTHONPATH")])])
    out.update(extra)
    return out


def write_config(tmp: Path, storage: str, dataset: str, model: str, **study: Any) -> Path:
    """A study config whose trials the fake driver answers in a blink (the model's config
    is read to build the space; its weights are never loaded)."""
    raw = {
        "study": {"name": study.pop("name", "drivers"), "storage": storage, "n_trials": 16,
                  "sampler": "random", "heartbeat_interval": 1, "grace_period": 10,
                  "cache_dir": str(tmp / "cache"), **study},
        "model": {"name": model, "max_length": 32},
        "task": {"dataset": dataset},
        "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "train.epochs": 1},
        "launcher": {"device": "cpu"},  # no GPU probe: the driver never imports torch
    }
    path = tmp / f"study-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start(config: Path, *overrides: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(config), *overrides], env=env(**extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent,
    )


def paretune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paretune.cli", *args], env=env(),
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll until ``check()``; a failure names what never happened."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.1)


def postgres_url() -> str:
    """The test server's URL (``.ci/run`` starts one), or skip saying why."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server for this test "
                    "(.ci/run starts one)")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install "
                        "'psycopg[binary]'")
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3}).connect().close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the PostgreSQL server at {POSTGRES_ENV} does not answer: "
                    f"{type(exc).__name__}")
    return url


def drop_study(storage: str, name: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
