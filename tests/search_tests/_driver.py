"""``paretune run`` as a separate process, with a fast fake trial instead of training.

The multi-driver tests start several of these on one study. Everything but the trial
itself is the real command: config checks, storage, heartbeats, signals, exit codes.

    python _driver.py CONFIG [OVERRIDES...]

Environment: ``FAKE_TRIAL_S`` (seconds each trial sleeps, default 0.2); ``FAKE_SLOW_FROM``
(trials from this number on sleep 120 s instead); ``FAKE_STARTED`` (a directory: each trial
writes ``<pid>-<number>`` there when it starts); ``FAKE_SAY`` (a line each trial prints on
stderr, as training progress does).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from paretune import search
from paretune.cli import main
from paretune.trial import TrialResult, TrialSpec


def quick(spec: TrialSpec) -> TrialResult:
    started = os.environ.get("FAKE_STARTED")
    if started:
        (Path(started) / f"{os.getpid()}-{spec.number}").write_text(str(time.time()))
    if os.environ.get("FAKE_SAY"):
        print(f"  trial {spec.number}: {os.environ['FAKE_SAY']}", file=sys.stderr, flush=True)
    slow = spec.number >= int(os.environ.get("FAKE_SLOW_FROM", "1000000"))
    time.sleep(120.0 if slow else float(os.environ.get("FAKE_TRIAL_S", "0.2")))
    lr = float(spec.params["train.lr"])
    metrics = {"accuracy": 0.5 + 100 * lr, "size_mb": 10 + 4000 * lr, "latency_ms": 1.0,
               "trainable_params": 5.0, "train_time_s": 0.1}
    return TrialResult(spec.number, "complete", metrics, None, 0.2)


_real_run_study = search.run_study


def _run_study(cfg: Any, **kwargs: Any) -> Any:
    return _real_run_study(cfg, trial_fn=quick, **kwargs)


if __name__ == "__main__":
    search.run_study = _run_study  # type: ignore[assignment]
    sys.exit(main(["run", *sys.argv[1:]]))
