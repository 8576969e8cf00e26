"""Shared fixtures: a tiny random-init BERT and a tiny synthetic task, nothing downloaded."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import pytest

TOPICS = {
    "sport": "goal match team coach league score player win",
    "tech": "software chip computer code robot phone data cloud",
    "money": "bank market price stock loan trade profit tax",
}
FILLER = "the a of today new report says this week people city".split()

# Every compression family off: tests search only what they name on top of this.
BASELINE_SPACE: dict[str, Any] = {
    "distill.enabled": False, "arch.n_layers": 0, "prune.ratio": 0.0, "quant.format": "fp32",
    "train.init": "pretrained", "vocab.keep": "all",
    "train.warmup_ratio": 0.0, "train.scheduler": "linear",
}


def synthetic_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Short texts whose label is given away by topic words: learnable in one epoch."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % len(TOPICS)]
        words = rng.sample(TOPICS[label].split(), 3) + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def topic_texts() -> list[str]:
    return [r["text"] for r in synthetic_rows(180, seed=0)]


@pytest.fixture(scope="session")
def needs_prefix_tuning() -> Any:
    """Call with a model type: skips the test where peft cannot prefix-tune it under the
    installed transformers (5.25 renamed past_key_values to cache)."""
    from paretune.spaces._layout import prefix_tuning_runs

    def skip_unless(model_type: str) -> None:
        if not prefix_tuning_runs(model_type):
            pytest.skip(f"peft cannot feed prefixes to {model_type} under this transformers "
                        "(5.25 renamed past_key_values to cache)")
    return skip_unless


@pytest.fixture(scope="session")
def baseline_space() -> dict[str, Any]:
    return dict(BASELINE_SPACE)


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "topics.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(synthetic_rows(180, seed=0))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from paretune.models import make_tiny_model

    texts = [r["text"] for r in synthetic_rows(180, seed=0)]
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert", texts)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    from paretune.models import make_tiny_llama

    texts = [r["text"] for r in synthetic_rows(180, seed=0)]
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", texts)


@pytest.fixture
def raw_config(tmp_path: Path, tiny_csv: str, tiny_model: str) -> dict[str, Any]:
    """A small, valid study config (as parsed YAML) on the tiny model and task."""
    return {
        "study": {
            "name": "t",
            "storage": f"sqlite:///{tmp_path / 'study.db'}",
            "n_trials": 2,
            "seed": 0,
            "objectives": {"accuracy": "maximize", "size_mb": "minimize"},
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"name": tiny_model, "max_length": 32},
        "task": {"dataset": tiny_csv, "eval_split": 0.25},
        "space": {
            **BASELINE_SPACE,
            "train.lr": {"low": 1e-3, "high": 5e-3, "log": True},
            "train.epochs": 1,
            "train.batch_size": 16,
            "train.weight_decay": 0.0,
        },
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random-init BERT and Llama (grouped-query attention: 4 heads, 2 key/value heads),
    wide enough that an artifact's bytes are dominated by weight matrices, as in real models."""
    from paretune.models import make_tiny_llama, make_tiny_model

    texts = [r["text"] for r in synthetic_rows(180, seed=0)]
    root = tmp_path_factory.mktemp("family-models")
    return {
        "bert": make_tiny_model(root / "bert", texts, hidden_size=128, intermediate_size=256),
        "llama": make_tiny_llama(
            root / "llama", texts, hidden_size=128, num_heads=4, num_kv_heads=2,
            intermediate_size=256,
        ),
    }
