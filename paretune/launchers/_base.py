"""The launcher interface: run trials somewhere, hand results back. No Optuna here."""

from __future__ import annotations

import abc
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from paretune.trial import TrialResult, TrialSpec

__all__ = ["BaseLauncher", "TrialFn", "cancelled", "environ", "worker_lost"]

TrialFn = Callable[[TrialSpec], TrialResult]


class BaseLauncher(abc.ABC):
    """Runs ``fn(spec)`` for submitted specs; ``wait`` returns results as they finish.

    The engine keeps at most ``max_concurrent`` specs submitted and not yet returned.
    """

    max_concurrent: int = 1

    @abc.abstractmethod
    def submit(self, fn: TrialFn, spec: TrialSpec) -> None:
        """Start running ``fn(spec)``; must not block on the trial itself (except local)."""

    @abc.abstractmethod
    def wait(self) -> list[TrialResult]:
        """Block until at least one submitted trial has finished; return all finished ones."""

    def cancel(self) -> list[TrialResult]:
        """Stop every running trial (Ctrl-C); return them as failed results."""
        return []

    def close(self) -> None:  # noqa: B027  (a no-op hook, as in Optuna's BaseSampler)
        """Release workers. Called once when the study ends, also after an error."""

    def __enter__(self) -> BaseLauncher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


CANCELLED = "cancelled: the search was interrupted (Ctrl-C) while this trial ran"


def cancelled(number: int, start: float) -> TrialResult:
    """A trial stopped by ``cancel`` (``start`` from ``time.perf_counter``)."""
    return TrialResult(number, "fail", error=CANCELLED, duration_s=time.perf_counter() - start)


def worker_lost(number: int, why: str, start: float, retries: int = 0) -> TrialResult:
    """A trial whose worker process (or node) died under it: the trial fails, the study
    goes on. ``why`` is the launcher's account of the death, folded onto one line."""
    why = " ".join(why.split())
    if len(why) > 400:
        why = why[:400] + " ..."
    after = f" (and in {retries} retr{'y' if retries == 1 else 'ies'})" if retries else ""
    return TrialResult(
        number, "fail", duration_s=time.perf_counter() - start,
        error=f"worker lost: the process running this trial died{after}: {why}",
    )


@contextlib.contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """``env`` set in this process's environment meanwhile (a child process started inside
    begins with it), then each variable as it was."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
