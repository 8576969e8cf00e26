"""The per-device timing lock, across processes: a timing excludes every step on the
device; a waiting timing stops new steps; nested steps of one process do not deadlock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from paretune import devicelock

# Probes the lock files without blocking, from another process: "free" or "busy".
PROBE = """
import fcntl, os, sys
path = os.path.join(sys.argv[1], "cpu." + sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT)
mode = fcntl.LOCK_SH if sys.argv[3] == "shared" else fcntl.LOCK_EX
try:
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("busy")
"""


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARETUNE_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(devicelock, "_FILES", {})
    return tmp_path


def probe(lock_dir: Path, part: str, mode: str, key: str = "cpu") -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.replace('"cpu."', repr(key + ".")),
                          str(lock_dir), part, mode],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_a_timing_excludes_steps_and_a_step_excludes_timings(lock_dir: Path) -> None:
    assert probe(lock_dir, "lock", "exclusive") == "free"
    with devicelock.shared("cpu"):  # a training step: others may step, none may time
        assert probe(lock_dir, "lock", "shared") == "free"
        assert probe(lock_dir, "lock", "exclusive") == "busy"
        assert probe(lock_dir, "turnstile", "exclusive") == "free"  # a timer may queue
    with devicelock.exclusive("cpu"):  # a timing: no step, no other timing
        assert probe(lock_dir, "lock", "shared") == "busy"
        assert probe(lock_dir, "turnstile", "exclusive") == "busy"  # new steps queue behind
    assert probe(lock_dir, "lock", "exclusive") == "free"


def test_steps_nest_and_locks_are_per_device(lock_dir: Path) -> None:
    with devicelock.shared("cpu"), devicelock.shared("cpu"):  # eval inside a train step
        assert probe(lock_dir, "lock", "exclusive") == "busy"
    assert probe(lock_dir, "lock", "exclusive") == "free"
    assert devicelock.device_key("cpu") == "cpu"


def test_a_crashed_holder_releases_the_lock(lock_dir: Path) -> None:
    code = ("import os; from paretune import devicelock\n"
            "with devicelock.exclusive('cpu'):\n    os._exit(3)\n")
    env = {**os.environ, "PARETUNE_LOCK_DIR": str(lock_dir)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 3
    assert probe(lock_dir, "lock", "exclusive") == "free"


def test_a_gpu_step_also_holds_the_cpu_so_a_cpu_timing_waits_for_it(
    lock_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(devicelock._KEYS, "cuda:0", "gpu-test")  # no GPU needed to name one
    with devicelock.shared("cuda:0"):  # a training step of a trial packed on GPU 0
        assert probe(lock_dir, "lock", "exclusive", key="gpu-test") == "busy"
        assert probe(lock_dir, "lock", "exclusive", key="cpu") == "busy"  # a CPU timer waits
        assert probe(lock_dir, "lock", "shared", key="cpu") == "free"  # CPU steps go on
    with devicelock.exclusive("cuda:0"):  # a timing on GPU 0 leaves the CPU to others
        assert probe(lock_dir, "lock", "shared", key="cpu") == "free"
        assert probe(lock_dir, "lock", "shared", key="gpu-test") == "busy"
    assert probe(lock_dir, "lock", "exclusive", key="cpu") == "free"
