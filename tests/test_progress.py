"""The live status line: whole lines only, also with lines from other writers in between."""

from __future__ import annotations

import io
import re
import threading
import time

from paretune.progress import CLEAR, Progress, emit, trial_logger


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_counts() -> None:
    p = Progress(5, stream=io.StringIO())
    p.started()
    p.started()
    p.finished("complete", 1, 0.5)
    p.finished("fail", 1, 0.5)
    assert p.status().startswith(
        "[paretune] 2/5 trials: 1 done, 0 running, 1 failed | front 1 | hypervolume 0.5 |"
    )


def test_not_a_terminal_prints_plain_status_lines() -> None:
    out = io.StringIO()
    with Progress(2, stream=out) as p:
        p.started()
        p.log("trial 0 done")
        p.finished("complete", 1, 2.0)
    assert out.getvalue().splitlines()[0] == "trial 0 done"
    assert out.getvalue().splitlines()[1].startswith("[paretune] 1/2 trials: 1 done")
    assert "\r" not in out.getvalue()


def test_quiet_prints_nothing() -> None:
    out = FakeTerminal()
    with Progress(2, stream=out, quiet=True) as p:
        p.started()
        p.log("trial 0 done")
        p.finished("complete", 1, 2.0)
    assert out.getvalue() == ""
    assert trial_logger(0, enabled=False)("epoch 1/1 done") is None


def test_terminal_lines_from_many_writers_never_mix() -> None:
    """The live line is redrawn by a ticker thread while other threads write whole lines
    (as trials in other processes do): every finished line is one writer's whole line."""
    out = FakeTerminal()
    p = Progress(3, stream=out, interval=0.001)
    p.started()

    def worker(n: int) -> None:
        for i in range(50):
            emit(f"  trial {n}: epoch {i} done", out)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.01)
    p.finished("complete", 1, 1.0)
    p.close()
    # what a terminal shows: each CLEAR erases the line; a newline keeps it
    shown = [seg.split(CLEAR)[-1] for seg in out.getvalue().split("\n")[:-1]]
    pattern = re.compile(r"^(  trial \d: epoch \d+ done|\[paretune\] .*)$")
    assert all(pattern.match(line) for line in shown), [s for s in shown if not pattern.match(s)]
    assert sum(line.startswith("  trial") for line in shown) == 150
    assert shown[-1].startswith("[paretune] 1/3 trials: 1 done")
