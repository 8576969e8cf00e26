"""run_trial end to end on the tiny model: every registered metric measured, failures are data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from paretune.search import parse_config
from paretune.trial import TrialSpec, run_trial


def _spec(raw: dict[str, Any], **params: Any) -> TrialSpec:
    cfg = parse_config(raw)
    base = {
        "train.lr": 3e-3, "train.epochs": 1, "train.batch_size": 16, "train.weight_decay": 0.0,
        "peft.method": "none",
    }
    return TrialSpec(0, {**base, **params}, cfg.context())


def test_full_finetune_measures_every_metric(raw_config: dict[str, Any]) -> None:
    result = run_trial(_spec(raw_config))
    assert result.state == "complete", result.error
    assert set(result.metrics) >= {
        "accuracy", "size_mb", "latency_ms", "trainable_params", "train_time_s"
    }
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert result.metrics["size_mb"] > 0
    assert result.metrics["latency_ms"] > 0


def test_lora_trains_fewer_params_and_ships_merged(raw_config: dict[str, Any]) -> None:
    full = run_trial(_spec(raw_config))
    lora = run_trial(_spec(raw_config, **{
        "peft.method": "lora", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
        "lora.targets": "qv",
    }))
    assert lora.state == "complete", lora.error
    assert lora.metrics["trainable_params"] < full.metrics["trainable_params"] / 5
    # adapters are merged into the base weights: the artifact is the same plain model
    assert abs(lora.metrics["size_mb"] - full.metrics["size_mb"]) < 0.01


def test_nan_loss_is_a_failed_trial_not_a_crash(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(
        torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan")
    )
    result = run_trial(_spec(raw_config))
    assert result.state == "fail"
    assert "training loss became nan at step 0" in (result.error or "")


def test_invalid_knob_value_fails_the_trial_with_the_rule(raw_config: dict[str, Any]) -> None:
    result = run_trial(_spec(raw_config, **{"train.lr": 5.0}))
    assert result.state == "fail"
    assert "`0 < train.lr <= 1` must hold, but got 5.0." == result.error


def test_same_seed_same_metrics(raw_config: dict[str, Any]) -> None:
    a = run_trial(_spec(raw_config))
    b = run_trial(_spec(raw_config))
    assert a.metrics["accuracy"] == b.metrics["accuracy"]
    assert a.metrics["size_mb"] == b.metrics["size_mb"]


def test_tiny_model_tokenizer_knows_the_words(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert len(tok) > 50
    ids = tok("goal match team")["input_ids"]
    assert tok.unk_token_id not in ids


def test_adalora_without_a_budget_to_prune_fails_fast(raw_config: dict[str, Any]) -> None:
    result = run_trial(_spec(raw_config, **{
        "peft.method": "adalora", "adalora.ranks": "8/8",
        "adalora.alpha": 8, "adalora.targets": "qv",
    }))
    assert result.state == "fail"
    assert (result.error or "").startswith(
        "adalora.ranks must be 'INIT/TARGET' with 1 <= TARGET < INIT"
    )
    assert result.metrics == {}  # failed before anything was measured


def test_a_model_replaced_in_its_directory_is_a_new_model(
    tiny_model: str, tiny_llama: str, tmp_path: Path
) -> None:
    # the reference is cached by this: keyed on the path alone, a directory whose BERT was
    # replaced by a Llama reused the BERT's reference (and failed every trial)
    import shutil

    from paretune.models import fingerprint

    mine = tmp_path / "mymodel"
    shutil.copytree(tiny_model, mine)
    first = fingerprint(str(mine))
    assert fingerprint(str(mine)) == first
    shutil.rmtree(mine)
    shutil.copytree(tiny_llama, mine)
    assert fingerprint(str(mine)) != first
    assert fingerprint("owner/name") == "owner/name"  # a hub id is its name


def test_a_classifier_trained_on_the_task_keeps_its_head_in_the_task_s_order(
    tiny_model: str, tmp_path: Path
) -> None:
    # a user's fine-tuned model numbers its classes tech, money, sport; paretune numbers
    # them in order of name: kept as they were, every class was read as another one
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    from paretune import models

    mine = tmp_path / "finetuned"
    shutil.copytree(tiny_model, mine)
    model = AutoModelForSequenceClassification.from_pretrained(
        mine, num_labels=3, ignore_mismatched_sizes=True)
    model.config.id2label = {0: "tech", 1: "money", 2: "sport"}
    model.config.label2id = {"tech": 0, "money": 1, "sport": 2}
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    model.save_pretrained(mine)
    models._WARM.clear()
    loaded, _ = models.load_base(str(mine), 3, labels=("money", "sport", "tech"))
    assert loaded.classifier.bias.tolist() == [1.0, 2.0, 0.0]
    assert loaded.config.id2label == {0: "money", 1: "sport", 2: "tech"}
    # a head for other classes is left as it is
    models._WARM.clear()
    other, _ = models.load_base(str(mine), 3, labels=("a", "b", "c"))
    assert other.classifier.bias.tolist() == [0.0, 1.0, 2.0]
    models._WARM.clear()
