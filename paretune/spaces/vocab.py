"""Vocabulary trimming (stage ARCH): keep only the tokens the task uses.

A pretrained model carries an embedding row for every token of its tokenizer (30,522 for
BERT, 49,152 for SmolLM2); a task reads a few thousand of them. The kept ids are cut out of
the input embeddings (and a causal LM's output head, tied or not) in increasing order of
their old ids, and the tokenizer is rebuilt with the kept tokens by editing its own
``tokenizer.json`` (WordPiece and BPE models), so the artifact stays a standard Hugging Face
directory: ``AutoTokenizer`` and the model class load it without paretune. The trial's train
and eval splits are tokenized again with the trimmed tokenizer, so quality is measured on
the ids the shipped tokenizer gives.

BPE keeps its merge closure: both parts of every merge that makes a kept token are kept (to
a fixpoint), and every single-character token (the byte alphabet of byte-level BPE). The
merge the original tokenizer applies at each step is then always kept, and none it did not
apply can come first, so the training texts encode to exactly the same tokens; other texts
fall back to smaller pieces. WordPiece matches the longest kept prefix first, so the training
texts keep their tokens too; another word is split into kept pieces where it can be
(``playing`` -> ``play ##ing``), and becomes ``[UNK]`` where it cannot.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.spaces._base import (
    Choice,
    FamilyConfig,
    SpaceInfo,
    Stage,
    TrialContext,
    register_family,
)

KEEPS = ("all", "task", "task+2k")
EXTRA = {"all": 0, "task": 0, "task+2k": 2000}  # lowest non-special ids kept on top
TRIMMABLE = ("wordpiece", "bpe")
# the config's special-token ids, remapped to the trimmed vocabulary
ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id",
           "cls_token_id", "mask_token_id", "decoder_start_token_id")
_PLACEHOLDER = re.compile(r"^[\[<]unused\d+[\]>]$")  # BERT's [unused0], Gemma's <unused0>
_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # byte-fallback tokens of sentencepiece BPEs


@dataclass(frozen=True)
class VocabConfig(FamilyConfig):
    """keep: the tokens the model and its tokenizer keep. `all`: every one (the model is not
    touched). `task`: the tokens of the training split (its texts and prompts, whole, as the
    base tokenizer splits them) and every special and added token; for BPE also every
    single-character token (byte-level: the 256 bytes; `<0xNN>` byte-fallback tokens) and
    both parts of every merge that makes a kept token, to a fixpoint, so every text still
    encodes. `task+2k`: `task` and the 2000 lowest ids that are not special, added or
    `[unusedN]` placeholders: WordPiece vocabularies (BERT's) list tokens roughly by
    frequency after their special block, BPE vocabularies number them in merge order.
    """

    keep: str = "all"

    def __post_init__(self) -> None:
        if self.keep not in KEEPS:
            raise ConfigError(
                f"vocab.keep must be one of {', '.join(KEEPS)}, but got {self.keep!r}."
            )


def shape(info: SpaceInfo) -> dict[str, Any] | str:
    if info.tokenizer not in TRIMMABLE:
        return (f"its tokenizer ({info.tokenizer or 'unreadable'}) is not a fast WordPiece "
                "or BPE tokenizer whose ids all have an embedding row")
    return {}


def check(cfg: VocabConfig, info: SpaceInfo) -> None:
    if cfg.keep != "all" and info.tokenizer not in TRIMMABLE:
        raise ConfigError(
            f"vocab.keep={cfg.keep} trims fast WordPiece or BPE tokenizers, but the model's "
            f"is {info.tokenizer or 'unreadable'}; use vocab.keep: all."
        )


def apply(model: Any, cfg: VocabConfig, ctx: TrialContext) -> Any:
    import torch

    from paretune import data

    if cfg.keep == "all":
        return model
    tokenizer = ctx.tokenizer
    dataset = data.load_task_data(ctx.task, ctx.seed)
    texts = list(dataset.train_texts) + list(dataset.train_prompts or [])
    wanted = {i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids}
    wanted |= set(tokenizer.all_special_ids) | set(config_ids(model))
    wanted |= set(lowest_ids(tokenizer, EXTRA[cfg.keep]))
    trimmed, kept = trim_tokenizer(tokenizer, wanted)
    before = int(model.get_input_embeddings().weight.shape[0])
    trim_model(model, kept)
    ctx.set_vocabulary(trimmed, torch.tensor(kept, dtype=torch.long))
    source = "the training split's tokens and the special tokens"
    if EXTRA[cfg.keep]:
        source += f", and the {EXTRA[cfg.keep]} lowest other ids"
    if ctx.info is not None and ctx.info.tokenizer == "bpe":
        source += ", with the byte alphabet and the parts of their merges"
    ctx.notes["vocabulary"] = (f"{len(kept)} of {before} tokens kept (vocab.keep: {cfg.keep}: "
                               f"{source})")
    ctx.log(f"vocab: kept {len(kept)} of {before} tokens ({cfg.keep})")
    return model


def config_ids(model: Any) -> list[int]:
    """The special-token ids the model's config names (pad, bos, eos, ...)."""
    out: list[int] = []
    for key in ID_KEYS:
        value = getattr(model.config, key, None)
        out += [value] if isinstance(value, int) else list(value or [])
    return out


def lowest_ids(tokenizer: Any, n: int) -> list[int]:
    """The ``n`` lowest ids of the tokenizer's model that are not added (special) tokens or
    ``[unusedN]`` placeholders."""
    if n == 0:
        return []
    added = set(tokenizer.added_tokens_decoder)
    ids = sorted(i for t, i in tokenizer.get_vocab().items()
                 if i not in added and not _PLACEHOLDER.match(t))
    return ids[:n]


# --- the tokenizer ----------------------------------------------------------------------


def trim_tokenizer(tokenizer: Any, wanted: set[int]) -> tuple[Any, list[int]]:
    """(a tokenizer of the kept tokens, their old ids in increasing order = new id order)."""
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    state, kept = trim_state(json.loads(tokenizer.backend_tokenizer.to_str()), wanted)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in tokenizer.vocab_files_names.values():  # vocab.txt, merges.txt, ...
            if name != "tokenizer.json":
                Path(tmp, name).unlink(missing_ok=True)
        config_file = Path(tmp, "tokenizer_config.json")
        config = json.loads(config_file.read_text())
        config.pop("added_tokens_decoder", None)  # old ids; tokenizer.json has the new ones
        config_file.write_text(json.dumps(config))
        Path(tmp, "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
        trimmed = AutoTokenizer.from_pretrained(tmp)
    old = tokenizer.convert_ids_to_tokens(kept)
    if len(trimmed) != len(kept) or trimmed.convert_ids_to_tokens(list(range(len(kept)))) != old:
        raise TrialFailed("vocab: the trimmed tokenizer does not number the kept tokens in "
                          "the order of their old ids")
    return trimmed, kept


def trim_state(state: dict[str, Any], wanted: set[int]) -> tuple[dict[str, Any], list[int]]:
    """A ``tokenizer.json`` state restricted to ``wanted`` (and what must come with them),
    renumbered; returns it and the kept old ids, in increasing order."""
    model = state["model"]
    vocab: dict[str, int] = model["vocab"]
    known = set(vocab.values()) | {a["id"] for a in state.get("added_tokens") or []}
    ids = {i for i in wanted if i in known} | {a["id"] for a in state.get("added_tokens") or []}

    def collect(i: int) -> int:
        ids.add(i)  # the post-processor's special tokens stay
        return i

    _map_ids(state.get("post_processor"), collect)
    if model.get("unk_token") in vocab:
        ids.add(vocab[model["unk_token"]])
    if model["type"] == "BPE":
        ids = _bpe_closure(model, ids)
    elif model["type"] != "WordPiece":
        raise TrialFailed(f"vocab: cannot trim a {model['type']} tokenizer; use vocab.keep: all")
    kept = sorted(ids)
    new = {old: i for i, old in enumerate(kept)}
    model["vocab"] = {t: new[i] for t, i in vocab.items() if i in new}
    if model["type"] == "BPE":
        prefix = model.get("continuing_subword_prefix") or ""
        model["merges"] = [m for m in model["merges"] if all(
            t in model["vocab"] for t in (*_pair(m), _merged(*_pair(m), prefix)))]
    for token in state.get("added_tokens") or []:
        token["id"] = new[token["id"]]
    _map_ids(state.get("post_processor"), lambda i: new[i])
    state["truncation"] = state["padding"] = None  # set again by every call
    return state, kept


def _pair(merge: Any) -> tuple[str, str]:
    """A merge as (left, right): tokenizers writes ``["a", "b"]``, older files ``"a b"``."""
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left, right


def _merged(left: str, right: str, prefix: str) -> str:
    return left + right[len(prefix):]


def _bpe_closure(model: dict[str, Any], ids: set[int]) -> set[int]:
    """``ids``, the single-character (base alphabet) and byte-fallback tokens, and both parts
    of every merge that makes a kept token, to a fixpoint."""
    vocab: dict[str, int] = model["vocab"]
    kept = {t for t, i in vocab.items() if i in ids or len(t) == 1 or _BYTE.match(t)}
    prefix = model.get("continuing_subword_prefix") or ""
    parts: dict[str, list[str]] = defaultdict(list)
    for merge in model["merges"]:
        left, right = _pair(merge)
        parts[_merged(left, right, prefix)] += [left, right]
    todo = list(kept)
    while todo:
        for part in parts.get(todo.pop(), ()):
            if part not in kept:
                kept.add(part)
                todo.append(part)
    return ids | {vocab[t] for t in kept if t in vocab}


def _map_ids(processor: Any, fn: Any) -> None:
    """Apply ``fn`` to every token id a post-processor names, in place."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor["processors"]:
            _map_ids(inner, fn)
    elif kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [fn(i) for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], fn(processor[key][1])]


# --- the model --------------------------------------------------------------------------


def trim_model(model: Any, kept: list[int]) -> None:
    """Cut the input embeddings (and the output head, tied or not) to the rows ``kept``, in
    place; the config's vocabulary size and special-token ids follow."""
    import torch

    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    new = {old: i for i, old in enumerate(kept)}
    index = torch.tensor(kept, dtype=torch.long, device=emb.weight.device)
    emb.weight = _rows(emb.weight, index)
    emb.num_embeddings = len(kept)
    if getattr(emb, "padding_idx", None) is not None:
        emb.padding_idx = new.get(emb.padding_idx)
    if out is not None:
        out.weight = emb.weight if tied else _rows(out.weight, index)
        if getattr(out, "bias", None) is not None:
            out.bias = _rows(out.bias, index)
        if hasattr(out, "out_features"):
            out.out_features = len(kept)
    model.config.vocab_size = len(kept)
    for config in (model.config, getattr(model, "generation_config", None)):
        for key in ID_KEYS:
            value = getattr(config, key, None) if config is not None else None
            if isinstance(value, int):
                setattr(config, key, new.get(value))
            elif isinstance(value, list):
                setattr(config, key, [new[i] for i in value if i in new])


def _rows(param: Any, index: Any) -> Any:
    import torch

    return torch.nn.Parameter(param.detach()[index].clone(), requires_grad=param.requires_grad)


register_family(
    "vocab",
    VocabConfig,
    apply,
    stage=Stage.ARCH,
    knobs={"keep": Choice(*KEEPS)},
    shape=shape,
    check=check,
)
