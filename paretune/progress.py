"""Progress on stderr: the driver's one live line, and training progress inside a trial.

Only the driver (the engine) draws the live line. A trial, possibly in another process,
writes whole lines only, each in one ``write``; on a terminal it first clears the current
line, and the driver redraws its live line below within a second. Lines from parallel
trials and the live line therefore never mix inside one line. When stderr is not a
terminal (a log file, CI) nothing is redrawn: the status is printed as a plain line after
each finished trial.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Progress", "emit", "trial_logger"]

CLEAR = "\r\033[K"  # carriage return + erase to the end of the line


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def emit(line: str, stream: IO[str] | None = None) -> None:
    """Write one whole line in one write; on a terminal, erase a live line first."""
    stream = stream or sys.stderr
    stream.write((CLEAR if _is_tty(stream) else "") + line + "\n")
    stream.flush()


def trial_logger(number: int, enabled: bool) -> Callable[[str], None]:
    """``ctx.log`` of a trial: ``  trial N: ...`` lines on stderr, or nothing."""
    if not enabled:
        return lambda line: None
    return lambda line: emit(f"  trial {number}: {line}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """The driver's status: trials done / running / failed, front size and hypervolume.

    ``quiet`` silences it and the driver's log lines.
    """

    def __init__(
        self, total: int, *, quiet: bool = False, stream: IO[str] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.total, self.quiet, self.interval = total, quiet, interval
        self.stream = stream or sys.stderr
        self.live = not quiet and _is_tty(self.stream)
        self.done = self.running = self.failed = self.stopped = 0
        self.front_size = 0
        self.hypervolume: float | None = None
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def status(self) -> str:
        hv = "-" if self.hypervolume is None else f"{self.hypervolume:.4g}"
        return (
            f"[paretune] {self.done + self.failed}/{self.total} trials: {self.done} done, "
            f"{self.running} running, {self.failed} failed"
            f"{f', {self.stopped} stopped' if self.stopped else ''} | front {self.front_size} | "
            f"hypervolume {hv} | {_clock(time.monotonic() - self._start)}"
        )

    def log(self, line: str) -> None:
        """A whole line above the live line."""
        if self.quiet:
            return
        with self._lock:
            emit(line, self.stream)
            self._draw()

    def started(self) -> None:
        self.running += 1
        if self.live and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        with self._lock:
            self._draw()

    def finished(self, state: str, front_size: int, hypervolume: float | None) -> None:
        self.running = max(0, self.running - 1)
        if state == "complete":
            self.done += 1
        elif state == "pruned":
            self.stopped += 1
        else:
            self.failed += 1
        self.front_size, self.hypervolume = front_size, hypervolume
        if self.quiet:
            return
        with self._lock:
            if self.live:
                self._draw()
            else:
                emit(self.status(), self.stream)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self.live:
            with self._lock:
                emit(self.status(), self.stream)  # the final status stays on screen
            self.live = False

    def _draw(self) -> None:
        if self.live:
            # a wrapped line could not be erased by CLEAR: cut it to the terminal's width
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self.stream.write(CLEAR + self.status()[:width])
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self._draw()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
