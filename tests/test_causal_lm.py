"""task.type causal_lm on a tiny random-init Llama (grouped-query attention), on CPU."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from paretune import data
from paretune.errors import ConfigError
from paretune.search import parse_config
from paretune.trial import TrialSpec, run_trial


def _lm_config(raw: dict[str, Any], model: str, **task: Any) -> dict[str, Any]:
    raw["model"]["name"] = model
    raw["task"].update({"type": "causal_lm", **task})
    raw["study"]["objectives"] = None
    return raw


def _run(raw: dict[str, Any], **params: Any) -> Any:
    cfg = parse_config(raw)
    base = {"train.lr": 5e-3, "train.epochs": 2, "train.batch_size": 16,
            "train.weight_decay": 0.0, "peft.method": "none"}
    return run_trial(TrialSpec(0, {**base, **params}, cfg.context()))


def test_default_objectives_follow_the_task(raw_config: dict[str, Any], tiny_llama: str) -> None:
    cfg = parse_config(_lm_config(raw_config, tiny_llama))
    assert cfg.study.objectives == {"perplexity": "minimize", "size_mb": "minimize"}


def test_accuracy_is_not_an_lm_objective(raw_config: dict[str, Any], tiny_llama: str) -> None:
    raw = _lm_config(raw_config, tiny_llama)
    raw["study"]["objectives"] = ["accuracy"]
    with pytest.raises(ConfigError, match="unknown objective for task type 'causal_lm'"):
        parse_config(raw)


def test_training_lowers_perplexity(raw_config: dict[str, Any], tiny_llama: str) -> None:
    raw = _lm_config(raw_config, tiny_llama)
    short = _run(raw, **{"train.lr": 1e-5, "train.epochs": 1})
    long = _run(raw)
    assert short.state == long.state == "complete", (short.error, long.error)
    assert {"perplexity", "eval_loss", "size_mb", "latency_ms"} <= set(long.metrics)
    assert "accuracy" not in long.metrics
    assert long.metrics["perplexity"] < 0.7 * short.metrics["perplexity"]


def test_lora_on_llama_projections(raw_config: dict[str, Any], tiny_llama: str) -> None:
    raw = _lm_config(raw_config, tiny_llama)
    result = _run(raw, **{"peft.method": "lora", "lora.r": 4, "lora.alpha": 8,
                          "lora.dropout": 0.0, "lora.targets": "all-linear"})
    assert result.state == "complete", result.error
    # r * (in + out) for q, k, v, o, gate, up, down in each of 2 layers; lm_head untouched
    r, hidden, inter, kv = 4, 32, 64, 16  # 2 key/value heads of 8 dims
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, inter), (hidden, inter), (inter, hidden)]
    assert result.metrics["trainable_params"] == 2 * sum(r * (i + o) for i, o in shapes)


def test_prompt_tokens_carry_no_loss(tmp_path: Path, tiny_llama: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    split = data.tokenize(tok, ["goal match"], [], 16, "k", None, prompts=["sport news"],
                          causal_lm=True)
    prompt_len = len(tok("sport news")["input_ids"])
    labels, ids = split.labels[0], split.input_ids[0]
    assert (labels[:prompt_len] == -100).all()
    n = int(split.attention_mask[0].sum())
    assert (labels[prompt_len:n] == ids[prompt_len:n]).all() and (labels[n:] == -100).all()


def test_prompt_response_columns(raw_config: dict[str, Any], tiny_llama: str,
                                 tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer"])
        for i in range(40):
            answer = ["sport goal", "tech chip", "money bank"][i % 3]
            w.writerow([f"what is topic {i % 3}", answer])
    raw = _lm_config(raw_config, tiny_llama, dataset=str(path), prompt_column="question",
                     text_column="answer")
    result = _run(raw)
    assert result.state == "complete", result.error
    raw["task"]["prompt_column"] = "query"
    with pytest.raises(ConfigError, match="task.prompt_column 'query' is not a column"):
        parse_config(raw)


def test_gpt2_lm_head_model_ships_and_loads_as_a_causal_lm(
    raw_config: dict[str, Any], topic_texts: list[str], tmp_path: Path
) -> None:
    """GPT-2's LM class is ``GPT2LMHeadModel``, not ``...ForCausalLM``: its saved artifact
    (fp32, transformers) was loaded back as a sequence classifier, and every such trial
    failed measuring perplexity (its logits have one row per text, not per token)."""
    from paretune.models import make_tiny

    gpt2 = make_tiny(tmp_path / "gpt2", "gpt2", topic_texts)
    result = _run(_lm_config(raw_config, gpt2), **{"train.epochs": 1, "quant.format": "fp32"})
    assert result.state == "complete", result.error
    assert result.notes["saved_format"] == "transformers"
    assert result.metrics["perplexity"] > 1.0


def test_decoder_model_as_classifier(raw_config: dict[str, Any], tiny_llama: str) -> None:
    raw_config["model"]["name"] = tiny_llama
    result = _run(raw_config)
    assert result.state == "complete", result.error
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


def test_pydoc_text_alias(raw_config: dict[str, Any], tiny_llama: str) -> None:
    raw = _lm_config(raw_config, tiny_llama, dataset="pydoc", max_train_rows=20,
                     max_eval_rows=10)
    ds = data.load_task_data(parse_config(raw).context()["task"], 0)
    assert len(ds.train_texts) == 20 and len(ds.eval_texts) == 10
    assert all(len(t) > 20 for t in ds.train_texts)


FAMILY_CASES = {
    # name: (params on top of a full fine-tune, check on (metrics, baseline metrics))
    "lora": ({"peft.method": "lora", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
              "lora.targets": "qv"}, lambda m, b: m["trainable_params"] < b["trainable_params"]),
    "dora": ({"peft.method": "dora", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
              "lora.targets": "qv"}, lambda m, b: m["trainable_params"] < b["trainable_params"]),
    "ia3": ({"peft.method": "ia3"}, lambda m, b: m["trainable_params"] < b["trainable_params"]),
    "prefix": ({"peft.method": "prefix", "prompt.virtual_tokens": 4},
               lambda m, b: m["size_mb"] > b["size_mb"]),  # ships the adapter beside the base
    "arch": ({"arch.n_layers": 1, "arch.layer_selection": "first"},
             lambda m, b: m["size_mb"] < b["size_mb"]),
    "prune-heads": ({"prune.ratio": 0.5, "prune.scheme": "heads"},
                    lambda m, b: m["size_mb"] < b["size_mb"]),
    "prune-ffn": ({"prune.ratio": 0.5, "prune.scheme": "ffn"},
                  lambda m, b: m["size_mb"] < b["size_mb"]),
    # ONNX Runtime formats on the CPU; on this 85K-parameter model the graph itself (about
    # 0.16 MB for 2 layers) is most of the artifact, so the ratios are far from 1/4 and 1/8
    "quant-8": ({"quant.format": "int8"},
                lambda m, b: m["size_mb"] < 0.8 * b["size_mb"]
                and m["perplexity"] < 1.1 * b["perplexity"]),
    "quant-4": ({"quant.format": "int4-g32"},
                lambda m, b: m["size_mb"] < 0.5 * b["size_mb"]
                and m["perplexity"] < 1.5 * b["perplexity"]),
    "distill": ({"distill.enabled": True, "distill.temperature": 2.0, "distill.alpha": 0.5},
                lambda m, b: m["perplexity"] < 10 * b["perplexity"]),
    # the unused letters' rows leave the embeddings and the untied head; the teacher (on
    # the whole vocabulary) reads and predicts through the kept ids
    "vocab": ({"vocab.keep": "task", "distill.enabled": True, "distill.temperature": 2.0,
               "distill.alpha": 0.5},
              lambda m, b: m["size_mb"] < b["size_mb"] and m["perplexity"] < 10 * b["perplexity"]),
}


@pytest.fixture(scope="module")
def lm_baseline(
    tmp_path_factory: pytest.TempPathFactory, tiny_csv: str, topic_texts: list[str]
) -> Any:
    from paretune.models import make_tiny_llama

    model = make_tiny_llama(tmp_path_factory.mktemp("lm") / "llama", topic_texts, hidden_size=64,
                            intermediate_size=128)
    tmp = tmp_path_factory.mktemp("lm-cache")
    raw = {
        "study": {"storage": f"sqlite:///{tmp / 'x.db'}", "cache_dir": str(tmp)},
        "model": {"name": model, "max_length": 32},
        "task": {"type": "causal_lm", "dataset": tiny_csv, "eval_split": 0.25},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }
    return raw, _run(raw, **{"train.epochs": 1})


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_every_family_on_a_causal_llama(case: str, lm_baseline: Any,
                                        needs_prefix_tuning: Any) -> None:
    if case == "prefix":
        needs_prefix_tuning("llama")
    raw, base = lm_baseline
    assert base.state == "complete", base.error
    params, check = FAMILY_CASES[case]
    result = _run(raw, **{"train.epochs": 1, **params})
    assert result.state == "complete", result.error
    assert check(result.metrics, base.metrics), (result.metrics, base.metrics)
