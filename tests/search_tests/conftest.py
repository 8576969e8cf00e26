"""A small finished study on the tiny model, shared by the tests that only read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAILED = 2  # this trial fails on purpose, so failure reasons show up


@dataclass(frozen=True)
class SmallStudy:
    storage: str
    name: str
    raw: dict[str, Any]
    path: Path


def small_raw(
    tmp: Path, tiny_csv: str, tiny_model: str, baseline: dict[str, Any]
) -> dict[str, Any]:
    """Three objectives (a 3-D front); full fine-tuning against LoRA of several ranks."""
    return {
        "study": {
            "name": "small",
            "storage": f"sqlite:///{tmp / 'small.db'}",
            "sampler": "random",
            "n_trials": 6,
            "seed": 3,
            "objectives": {
                "accuracy": "maximize", "trainable_params": "minimize", "latency_ms": "minimize",
            },
            "cache_dir": str(tmp / "cache"),
        },
        "model": {"name": tiny_model, "max_length": 32},
        "task": {"dataset": tiny_csv, "eval_split": 0.25},
        "space": {
            **baseline,
            "train.lr": {"low": 5e-3, "high": 2e-2, "log": True},
            "train.epochs": 3,
            "train.batch_size": 16,
            "train.weight_decay": 0.0,
            "peft.method": ["none", "lora"],
            "lora.r": [2, 4, 8],
            "lora.dropout": 0.0,
        },
        "measure": {"latency_repeats": 3, "latency_warmup": 1},
    }


@pytest.fixture(scope="session")
def small_study(
    tmp_path_factory: pytest.TempPathFactory, tiny_csv: str, tiny_model: str,
    baseline_space: dict[str, Any],
) -> SmallStudy:
    from paretune.search import parse_config, run_study
    from paretune.trial import TrialResult, TrialSpec, run_trial

    tmp = tmp_path_factory.mktemp("small-study")
    raw = small_raw(tmp, tiny_csv, tiny_model, baseline_space)

    def trial_fn(spec: TrialSpec) -> TrialResult:
        if spec.number == FAILED:
            return TrialResult(spec.number, "fail", error="out of memory (on purpose, in a test)")
        return run_trial(spec)

    cfg = parse_config(raw)
    run_study(cfg, trial_fn=trial_fn, quiet=True)
    return SmallStudy(cfg.study.storage, cfg.study.name, raw, tmp)
