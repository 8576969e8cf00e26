"""Vocabulary trimming on a tiny BERT (WordPiece) and a tiny Llama (byte-level BPE): the
artifact reloads without paretune with the same ids and logits, the bytes drop by exactly
the removed rows, the training texts keep their tokens, and the family composes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from paretune.search import parse_config
from paretune.trial import TrialSpec, build, run_trial, write_artifact

BASE = {"train.lr": 3e-3, "train.epochs": 1, "train.batch_size": 16,
        "train.weight_decay": 0.0, "peft.method": "none"}
# words the tokenizers know and the task never uses: what trimming removes
OTHER = ("zebra quantum violin orchestra harbor lighthouse glacier meadow saxophone "
         "volcano canyon pyramid telescope carnival lantern blossom whisper marble").split()
CASES = {  # name -> task type
    "bert": "classification",
    "llama-bpe": "causal_lm",
    "roberta-bpe": "classification",  # byte-level BPE with RoBERTa's <s> ... </s>
}
NO_PARETUNE = "import sys\nsys.modules['paretune'] = None\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, topic_texts: list[str]) -> dict[str, str]:
    """Tiny models whose tokenizers know many words the task does not use."""
    from paretune.models import make_tiny, make_tiny_llama, make_tiny_model

    root = tmp_path_factory.mktemp("vocab-models")
    texts = topic_texts + [" ".join(OTHER[i:] + OTHER[:i]) for i in range(len(OTHER))] * 3
    return {
        "bert": make_tiny_model(root / "bert", texts, hidden_size=64, intermediate_size=128),
        "llama-bpe": make_tiny_llama(root / "llama", texts, hidden_size=64,
                                     intermediate_size=128, tokenizer="bpe"),
        "roberta-bpe": make_tiny(root / "roberta", "roberta", texts, hidden_size=64,
                                 intermediate_size=128, tokenizer="bpe"),
    }


def context(model: str, tmp: Path, tiny_csv: str, task_type: str) -> dict[str, Any]:
    raw = {
        "study": {"cache_dir": str(tmp / "cache")},
        "model": {"name": model, "max_length": 32},
        "task": {"dataset": tiny_csv, "eval_split": 0.25, "type": task_type},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }
    return parse_config(raw).context()


def nbytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def eval_logits(model: Any, ctx: Any) -> torch.Tensor:
    data = ctx.eval_data
    with torch.no_grad():
        return model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits


@pytest.mark.parametrize("case", list(CASES))
def test_trimmed_artifact_reloads_without_paretune_with_the_same_ids_and_logits(
    case: str, models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    from paretune import data

    task_type = CASES[case]
    ctx_in = context(models[case], tmp_path, tiny_csv, task_type)
    whole, whole_ctx = build(TrialSpec(0, {**BASE, "vocab.keep": "all"}, ctx_in))
    model, ctx = build(TrialSpec(0, {**BASE, "vocab.keep": "task"}, ctx_in))
    kept = len(ctx.kept_ids)
    removed = whole.config.vocab_size - kept
    assert kept == model.config.vocab_size == len(ctx.tokenizer) and removed >= len(OTHER)
    full_dir, out = tmp_path / "all", tmp_path / "task"
    write_artifact(whole, whole_ctx, str(full_dir))
    write_artifact(model, ctx, str(out))
    ctx.tokenizer.save_pretrained(out)
    # the rows removed, at 4 bytes a parameter, twice for an untied LM head
    heads = 2 if task_type == "causal_lm" else 1
    dropped = nbytes(full_dir) - (nbytes(out) - sum(
        p.stat().st_size for p in out.iterdir() if p.name.startswith("tokenizer")))
    assert abs(dropped - removed * whole.config.hidden_size * 4 * heads) < 256, dropped

    dataset = data.load_task_data(ctx.task, ctx.seed)
    (tmp_path / "texts.json").write_text(json.dumps(dataset.eval_texts))
    auto = "AutoModelForCausalLM" if task_type == "causal_lm" else \
        "AutoModelForSequenceClassification"
    code = NO_PARETUNE + f'''
import json
import torch
from transformers import {auto}, AutoTokenizer
try:
    import paretune
    raise SystemExit("paretune is importable")
except ImportError:
    pass
texts = json.load(open({str(tmp_path / "texts.json")!r}))
tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
model = {auto}.from_pretrained({str(out)!r}).eval()
enc = tokenizer(texts, truncation=True, max_length=32, padding="max_length",
                return_tensors="pt")
with torch.no_grad():
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
torch.save({{"ids": enc["input_ids"], "mask": enc["attention_mask"], "logits": logits}},
           {str(tmp_path / "got.pt")!r})
'''
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "got.pt")
    # the ids the trial measured on (a causal LM's trial also appends eos to each text)
    mask = got["mask"]
    assert mask.sum() > 0.5 * ctx.eval_data.attention_mask.sum()
    assert torch.equal(got["ids"] * mask, ctx.eval_data.input_ids * mask)
    with torch.no_grad():
        expected = model(input_ids=got["ids"], attention_mask=mask).logits
    assert torch.allclose(got["logits"], expected, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_training_texts_keep_their_tokens_and_others_fall_back(
    case: str, models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    ctx_in = context(models[case], tmp_path, tiny_csv, CASES[case])
    _, whole = build(TrialSpec(0, {**BASE, "train.epochs": 0, "vocab.keep": "all"}, ctx_in))
    _, ctx = build(TrialSpec(0, {**BASE, "train.epochs": 0, "vocab.keep": "task"}, ctx_in))
    # the training split, tokenized again by the trimmed tokenizer, is the same tokens
    assert torch.equal(ctx.kept_ids[ctx.train_data.input_ids], whole.train_data.input_ids)
    text = "zebra goal"
    ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
    if case == "bert":  # a WordPiece word outside the kept tokens is [UNK]
        assert ctx.tokenizer.convert_ids_to_tokens(ids)[0] == "[UNK]"
    else:  # a byte-level BPE word falls back to smaller pieces: it decodes as it was
        assert len(ids) > len(whole.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert ctx.tokenizer.decode(ids) == text


def test_a_trimmed_lm_is_scored_per_token_of_the_base_tokenizer(
    models: dict[str, str], tmp_path: Path
) -> None:
    """Eval words the training split never shows fall back to more, smaller pieces under a
    trimmed vocabulary; its eval_loss is still the model's NLL of the same text divided by
    the base tokenizer's count of it, not by its own larger count (which would make every
    trimmed model look better than it is)."""
    import torch.nn.functional as F

    from paretune import objectives
    from paretune.objectives.quality import _eval_loss

    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text\n" + "the goal of the match\n" * 40)
    test.write_text("text\n" + "".join(f"{w} of the {v}\n" for w, v in zip(OTHER, OTHER[1:])))
    raw = {"study": {"cache_dir": str(tmp_path / "cache")},
           "model": {"name": models["llama-bpe"], "max_length": 64},
           "task": {"dataset": str(train), "eval_split": str(test), "type": "causal_lm"}}
    ctx_in = parse_config(raw).context()
    _, whole = build(TrialSpec(0, {**BASE, "train.epochs": 0, "vocab.keep": "all"}, ctx_in))
    model, ctx = build(TrialSpec(0, {**BASE, "train.epochs": 0, "vocab.keep": "task"}, ctx_in))
    scored = lambda split: int((split.labels[:, 1:] != -100).sum())  # noqa: E731
    assert scored(ctx.eval_data) > scored(whole.eval_data)  # more pieces, same text
    data = ctx.eval_data
    with torch.no_grad():
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    nll = float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                data.labels[:, 1:].reshape(-1), ignore_index=-100,
                                reduction="sum"))
    outcome = objectives.Outcome(model=model, eval_data=data, artifact_dir="", device="cpu",
                                 task_type="causal_lm", stats={}, measure={}, cache={})
    assert _eval_loss(outcome) == pytest.approx(nll / scored(whole.eval_data), rel=1e-4)
    assert whole.eval_data.loss_scale == 1.0


def test_task_plus_2k_keeps_the_lowest_ids_but_not_placeholders(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    from paretune.spaces import vocab

    words = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
             "the", "of", "and", "zebra"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    assert tokenizer.convert_ids_to_tokens(vocab.lowest_ids(tokenizer, 3)) == [
        "the", "of", "and"]
    trimmed, kept = vocab.trim_tokenizer(tokenizer, {tokenizer.convert_tokens_to_ids("of")})
    assert trimmed.convert_ids_to_tokens(list(range(len(kept)))) == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "of"]
    assert trimmed("of zebra")["input_ids"] == [2, 5, 1, 3]  # [CLS] of [UNK] [SEP]


def test_the_family_leaves_tokenizers_it_cannot_trim(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    from paretune.errors import ConfigError
    from paretune.spaces import SpaceInfo, _layout, vocab

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    assert _layout.tokenizer_kind(BertTokenizerFast(str(tmp_path / "vocab.txt"))) == "wordpiece"
    # a token added to the tokenizer and not the model (Gemma's tokenizer adds <mask>)
    ids = len(BertTokenizerFast(str(tmp_path / "vocab.txt")))
    more = _layout.tokenizer_kind(BertTokenizerFast(str(tmp_path / "vocab.txt")), ids - 1)
    assert more == f"wordpiece with {ids} ids for {ids - 1} embedding rows"
    assert more in vocab.shape(SpaceInfo("bert", 2, 4, 4, 32, 64, ids - 1, tokenizer=more))
    assert _layout.tokenizer_kind(BertTokenizerFast(str(tmp_path / "vocab.txt")), ids) == \
        "wordpiece"
    info = SpaceInfo("t5", 2, 4, 4, 32, 64, 100, tokenizer="unigram")
    assert isinstance(vocab.shape(info), str)
    assert vocab.shape(SpaceInfo("bert", 2, 4, 4, 32, 64, 100, tokenizer="bpe")) == {}
    with pytest.raises(ConfigError, match="use vocab.keep: all"):
        vocab.check(vocab.VocabConfig(keep="task"), info)
    vocab.check(vocab.VocabConfig(keep="all"), info)
    with pytest.raises(ConfigError, match="vocab.keep must be one of all, task, task"):
        vocab.VocabConfig(keep="2k")


COMPOSED = {  # vocab.keep: task together with another family
    "arch": {"arch.n_layers": 1},
    "prune-heads": {"prune.ratio": 0.5, "prune.scheme": "heads"},
    "lora": {"peft.method": "lora", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
             "lora.targets": "qv"},
    "prefix": {"peft.method": "prefix", "prompt.virtual_tokens": 4},
    "distill": {"distill.enabled": True, "distill.temperature": 2.0, "distill.alpha": 0.5},
    "int8": {"quant.format": "int8"},
}


@pytest.mark.parametrize("other", list(COMPOSED))
def test_trimming_composes_with_every_family(
    other: str, models: dict[str, str], tiny_csv: str, tmp_path: Path,
    needs_prefix_tuning: Any,
) -> None:
    """The artifact, in whatever format the other family needs, is the trimmed model with
    its trimmed tokenizer, and its runtime computes what the trial measured."""
    if other == "prefix":
        needs_prefix_tuning("bert")
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from paretune.models import load_artifact

    ctx_in = context(models["bert"], tmp_path, tiny_csv, "classification")
    params = {**BASE, "vocab.keep": "task", **COMPOSED[other]}
    out = tmp_path / "out"
    if other == "distill":  # the trial that trains the teacher draws its dropout after the
        build(TrialSpec(0, params, ctx_in))  # teacher's training: train it beforehand
    result = run_trial(TrialSpec(0, params, ctx_in), artifact_dir=str(out))
    assert result.state == "complete", result.error
    model, ctx = build(TrialSpec(0, params, ctx_in))  # the same trial again, in memory
    kept = len(ctx.kept_ids)
    assert result.notes["vocabulary"].startswith(f"{kept} of ")
    assert len(AutoTokenizer.from_pretrained(out)) == kept
    base = out / "base" if other == "prefix" else out  # an adapter's base beside it
    assert json.loads((base / "config.json").read_text())["vocab_size"] == kept
    if other == "prefix":  # the trimmed table ships once, in the base
        with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as fh:
            assert not [k for k in fh.keys() if "word_embeddings" in k]
    if other != "int8":  # ONNX Runtime's int8 is not the fp32 model in memory
        shipped = load_artifact(out)
        assert torch.allclose(eval_logits(shipped, ctx), eval_logits(model, ctx), atol=1e-5)
