"""Latency as measured: warm-up, repeats, median and spread, the device's lock held, the
CPU's thread count; where it was measured is recorded on the trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from paretune.errors import ConfigError
from paretune.objectives.cost import spread, time_model


class _Probe:
    """A 'model' that records, at each call, the torch thread count and whether another
    process could take the CPU's timing lock."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir, self.calls, self.threads, self.lock = lock_dir, 0, [], []

    def __call__(self, **batch: Any) -> None:
        import torch

        self.calls += 1
        self.threads.append(torch.get_num_threads())
        if self.calls == 1:
            code = ("import fcntl, os, sys\n"
                    "fd = os.open(os.path.join(sys.argv[1], 'cpu.lock'), os.O_RDWR)\n"
                    "try:\n    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB); print('free')\n"
                    "except BlockingIOError:\n    print('busy')\n")
            out = subprocess.run([sys.executable, "-c", code, str(self.lock_dir)],
                                 capture_output=True, text=True, check=True)
            self.lock.append(out.stdout.strip())


@pytest.mark.parametrize("exclusive", [True, False])
def test_time_model_warms_up_repeats_and_holds_the_lock(
    exclusive: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from paretune import devicelock

    monkeypatch.setenv("PARETUNE_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(devicelock, "_FILES", {})
    with devicelock.shared("cpu"):
        pass  # creates the lock files
    before = torch.get_num_threads()
    model = _Probe(tmp_path)
    times, mode = time_model(model, {}, "cpu", warmup=2, repeats=5, threads=1,
                             exclusive=exclusive)
    assert len(times) == 5 and model.calls == 7 and all(t >= 0 for t in times)
    assert mode == "eager"  # CUDA graphs are for GPUs
    assert set(model.threads) == {1} and torch.get_num_threads() == before
    assert model.lock == (["busy"] if exclusive else ["free"])


@pytest.mark.parametrize("captured", [True, False])
def test_a_gpu_pass_is_timed_as_a_cuda_graph_or_else_eagerly(
    captured: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from paretune.objectives import cost

    asked = []

    def graph_times(model: Any, batch: Any, n: int) -> list[float] | None:
        asked.append(n)
        return [0.001 * i for i in range(n)] if captured else None

    monkeypatch.setattr(cost, "_graph_times", graph_times)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    calls = []
    times, mode = time_model(lambda **b: calls.append(1), {}, "cuda", warmup=2, repeats=3,
                             exclusive=False)
    assert asked == [5] and len(times) == 3
    if captured:  # the warm-up replays are dropped, the timed ones kept
        assert mode == "cuda graph" and times == [0.002, 0.003, 0.004] and not calls
    else:  # a pass that cannot be captured: 2 + 3 eager passes
        assert mode == "eager" and len(calls) == 5
    asked.clear()
    times, mode = time_model(lambda **b: None, {}, "cuda", warmup=0, repeats=2,
                             exclusive=False, cuda_graph=False)
    assert mode == "eager" and len(times) == 2 and not asked


def test_spread_is_the_median_and_the_interquartile_range() -> None:
    median, iqr = spread([5.0, 1.0, 2.0, 4.0, 3.0])
    assert median == 3.0 and iqr == 2.0
    assert spread([7.0]) == (7.0, 0.0)


@pytest.mark.parametrize("measure,message", [
    ({"device": "gpu"}, "measure.device must be auto"),
    ({"threads": 0}, "measure.threads must be a positive integer"),
    ({"exclusive": "yes"}, "measure.exclusive must be true or false"),
    ({"cuda_graph": "yes"}, "measure.cuda_graph must be true or false"),
    ({"latency_repeats": 0}, "measure.latency_repeats must be a positive integer"),
])
def test_measure_keys_are_checked(
    measure: dict[str, Any], message: str, raw_config: dict[str, Any]
) -> None:
    from paretune.search import parse_config

    raw_config["measure"] = measure
    with pytest.raises(ConfigError, match=message):
        parse_config(raw_config)


def test_measuring_on_the_cpu_shapes_the_formats_for_the_cpu(raw_config: dict[str, Any]) -> None:
    from paretune.search import parse_config

    raw_config["measure"] = {"device": "cpu", "threads": 1}
    raw_config["space"].pop("quant.format")
    cfg = parse_config(raw_config)
    assert cfg.info.measure_device == "cpu"
    assert "nf4-g64" not in cfg.space["quant.format"].choices  # no CPU runtime
    assert cfg.context()["measure"]["threads"] == 1


def test_trial_notes_are_stored_on_the_optuna_trial(raw_config: dict[str, Any]) -> None:
    import optuna

    from paretune.search import parse_config
    from paretune.search._engine import tell_result
    from paretune.trial import TrialResult

    cfg = parse_config(raw_config)
    study = optuna.create_study(directions=cfg.directions())
    trial = study.ask()
    notes = {"saved_format": "onnx", "latency_device": "cpu: test, 1 threads",
             "latency_runtime": "onnxruntime 1.0"}
    result = TrialResult(trial.number, "complete", {"accuracy": 0.9, "size_mb": 1.0},
                         notes=notes)
    assert tell_result(study, trial, result, cfg) == "complete"
    attrs = study.trials[0].user_attrs
    assert {k: attrs[k] for k in notes} == notes
