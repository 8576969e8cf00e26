"""The local launcher: trials run one by one, in this process."""

from __future__ import annotations

from paretune.launchers._base import BaseLauncher, TrialFn
from paretune.trial import TrialResult, TrialSpec


class LocalLauncher(BaseLauncher):
    max_concurrent = 1

    def __init__(self) -> None:
        self._queue: list[tuple[TrialFn, TrialSpec]] = []

    def submit(self, fn: TrialFn, spec: TrialSpec) -> None:
        self._queue.append((fn, spec))

    def wait(self) -> list[TrialResult]:
        fn, spec = self._queue.pop(0)
        return [fn(spec)]
