"""One timing at a time per device, on a whole node: a readers-writer lock in files.

Trials packed on one GPU (worker processes, Ray actors) run their steps side by side; a
latency timed meanwhile measures the neighbours' load as much as the model. So timing takes
the device's lock exclusively (``exclusive``) and every other GPU step (a training step, an
eval batch) takes it shared (``shared``): while one process times, the others finish the
step they are in and wait at the next one. A third file is a turnstile that gives a waiting
timer priority over new steps, so that timings are never starved by a stream of steps.

A GPU step holds the CPU's lock shared as well (it works the host's CPU too), so a timing
on the CPU pauses the GPU trials of the node; a timing on a GPU pauses that GPU's alone.

The lock files live in a node-local directory (``$PARETUNE_LOCK_DIR``, else the system's
temporary directory), one set per physical device: a GPU is named by its UUID (the same for
every process whatever ``CUDA_VISIBLE_DEVICES`` says), the CPU by ``cpu``. ``flock`` locks
are released by the kernel when a process dies, so a crashed trial never leaves one held.
Where ``fcntl`` does not exist (Windows) the locks do nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["device_key", "exclusive", "shared"]

_KEYS: dict[str, str] = {}  # device -> key
_FILES: dict[str, tuple[int, int]] = {}  # key -> (turnstile fd, lock fd), opened once
_DEPTH: dict[str, int] = {}  # key -> how deep this process already holds the lock
_MUTEX = threading.Lock()


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"paretune-device-locks-{os.getuid()}"
    return Path(os.environ.get("PARETUNE_LOCK_DIR", default))


def device_key(device: str) -> str:
    """``cpu``, or the UUID of the GPU that ``device`` (``cuda``, ``cuda:1``) names."""
    if not device.startswith("cuda"):
        return "cpu"
    if device not in _KEYS:
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        _KEYS[device] = f"gpu-{uuid}" if uuid is not None else f"gpu-{os.uname().nodename}-{index}"
    return _KEYS[device]


def _fds(key: str) -> tuple[int, int]:
    if key not in _FILES:
        folder = lock_dir()
        folder.mkdir(parents=True, exist_ok=True)
        _FILES[key] = tuple(  # type: ignore[assignment]
            os.open(folder / f"{key}.{part}", os.O_RDWR | os.O_CREAT, 0o600)
            for part in ("turnstile", "lock")
        )
    return _FILES[key]


@contextlib.contextmanager
def _hold(key: str, mode: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no flock: nothing to coordinate with
        yield
        return
    with _MUTEX:
        depth = _DEPTH.get(key, 0)
        _DEPTH[key] = depth + 1
    if depth:  # already held by this process (an eval batch inside a training step)
        try:
            yield
        finally:
            with _MUTEX:
                _DEPTH[key] -= 1
        return
    turnstile, lock = _fds(key)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # a waiting timer holds this: new steps wait
        if mode == "shared":
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_SH)
        else:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        with _MUTEX:
            _DEPTH[key] -= 1


def exclusive(device: str) -> contextlib.AbstractContextManager[None]:
    """Hold ``device`` alone: no other process of this node runs a step on it meanwhile."""
    return _hold(device_key(device), "exclusive")


@contextlib.contextmanager
def shared(device: str) -> Iterator[None]:
    """Run one step on ``device``, waiting while another process times on it. A GPU step
    also works the host's CPU (the Python and kernel launches around it), so it holds the
    CPU's lock shared too: a latency timed on the CPU (``measure.device: cpu``) waits for
    the trials packed on the node's GPUs as well, not only for those training on the CPU."""
    key = device_key(device)
    with _hold(key, "shared"), (_hold("cpu", "shared") if key != "cpu"
                                else contextlib.nullcontext()):
        yield
