"""The real all-MiniLM-L6-v2 on a slice of BBC News (marked slow: minutes on CPU)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from paretune.search import front_trials, load_config, run_study

pytestmark = pytest.mark.slow


def test_two_trial_minilm_search_on_bbc(tmp_path: Path) -> None:
    demo = Path(__file__).parents[1] / "paretune" / "demo.yaml"
    cfg = load_config(str(demo), [
        "study.name=slow", f"study.storage=sqlite:///{tmp_path / 's.db'}", "study.n_trials=2",
        f"study.cache_dir={tmp_path / 'cache'}", "task.max_train_rows=120",
        "task.max_eval_rows=80", "model.max_length=64", "space.train.epochs=1",
        "space.peft.method=none", "space.train.lr=0.001", "space.arch.n_layers=6",
        "space.quant.format=fp32",
    ])
    study = run_study(cfg, log=lambda line: None)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        assert t.user_attrs["accuracy"] > 0.5  # 5 classes: chance is 0.2
        assert 80 < t.user_attrs["size_mb"] < 100  # 22.7M fp32 params = 90.9 MB
    assert front_trials(study)
