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
        "space.quant.format=fp32", "space.vocab.keep=all",
    ])
    study = run_study(cfg, log=lambda line: None)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        assert t.user_attrs["accuracy"] > 0.5  # 5 classes: chance is 0.2
        assert 80 < t.user_attrs["size_mb"] < 100  # 22.7M fp32 params = 90.9 MB
    assert front_trials(study)


def test_trimming_minilm_to_a_bbc_slice_keeps_its_accuracy(tmp_path: Path) -> None:
    """The study's reference (MiniLM fine-tuned on 600 BBC rows) compressed as it is, with
    the whole 30,522-token vocabulary and with the training split's tokens only: accuracy
    within 0.01 (4 of the 400 eval rows), the artifact smaller by the removed rows (384 fp32
    values each). What is lost is the eval rows' words that the training rows never use:
    they read as [UNK] or as smaller pieces."""
    from paretune.search import parse_config
    from paretune.trial import TrialSpec, run_trial

    raw = {
        "study": {"cache_dir": str(tmp_path / "cache")},
        "model": {"name": "minilm", "max_length": 64},
        "task": {"dataset": "bbc", "eval_split": 0.2, "max_train_rows": 600,
                 "max_eval_rows": 400},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }
    context = parse_config(raw).context()
    recipe = {"train.init": "finetuned", "train.epochs": 0, "peft.method": "none",
              "train.batch_size": 16}
    whole, trimmed = (run_trial(TrialSpec(0, {**recipe, "vocab.keep": keep}, context))
                      for keep in ("all", "task"))
    assert whole.state == trimmed.state == "complete", (whole.error, trimmed.error)
    kept = int(trimmed.notes["vocabulary"].split()[0])
    print(f"\nMiniLM on BBC: accuracy {whole.metrics['accuracy']:.4f} with 30522 tokens, "
          f"{trimmed.metrics['accuracy']:.4f} with {kept}; size_mb "
          f"{whole.metrics['size_mb']:.2f} -> {trimmed.metrics['size_mb']:.2f}")
    assert whole.metrics["accuracy"] > 0.8
    # accuracies are multiples of 1/400: the tolerance only absorbs float rounding
    assert abs(trimmed.metrics["accuracy"] - whole.metrics["accuracy"]) <= 0.01 + 1e-6
    removed_mb = (30522 - kept) * 384 * 4 / 1e6
    assert abs(whole.metrics["size_mb"] - trimmed.metrics["size_mb"] - removed_mb) < 0.01
