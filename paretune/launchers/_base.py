"""The launcher interface: run trials somewhere, hand results back. No Optuna here."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from paretune.trial import TrialResult, TrialSpec

__all__ = ["BaseLauncher", "TrialFn"]

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

    def close(self) -> None:
        """Release workers. Called once when the study ends, also after an error."""

    def __enter__(self) -> BaseLauncher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
