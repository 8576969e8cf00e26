"""Where the parts of a supported architecture live: one table, read by every family.

Each entry names, relative to the model's base (``model.<base_model_prefix>``), the list of
transformer layers and, inside one layer, the attention projections and the MLP matrices.
Families derive everything else from it (LoRA / IA3 targets, layer dropping, head and
neuron pruning), so supporting a new architecture is one entry here. A model type without an
entry still trains, adapts (``all-linear`` adapters) and quantizes; the families that need
its layout leave the space before the study starts (see ``SpaceInfo``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from paretune.errors import TrialFailed
from paretune.spaces._base import SpaceInfo

__all__ = [
    "Layout", "attention", "backbone", "ffn", "head_modules", "layer_list", "layout",
    "layout_of", "module_regex", "peft_task_type", "set_layer_list", "space_info",
    "tokenizer_kind",
]


@dataclass(frozen=True)
class Layout:
    """Dotted module paths of one architecture.

    layers: the ModuleList of transformer layers, from the base model.
    q, k, v, o: attention projections, from one layer (``k`` and ``v`` equal ``q`` where the
        projection is fused, as GPT-2's ``c_attn``).
    ffn_in, ffn_out: MLP matrices whose output features (``ffn_in``) or input features
        (``ffn_out``) are the hidden neurons.
    heads: how attention heads are removed: ``bert`` (a BERT relabelled ``paretune_bert``,
        whose config carries the head size), ``gqa`` (Llama-style configs with ``head_dim``
        and key/value groups), or None (not supported).
    ffn_key: the config key of the MLP width.
    """

    layers: str
    q: str
    k: str
    v: str
    o: str
    ffn_in: tuple[str, ...]
    ffn_out: tuple[str, ...]
    heads: str | None = None
    ffn_key: str = "intermediate_size"

    @property
    def fused_qkv(self) -> bool:
        return self.q == self.k


_BERT = Layout(
    "encoder.layer", "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", ("intermediate.dense",), ("output.dense",),
)
_LLAMA = Layout(
    "layers", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",), heads="gqa",
)
LAYOUTS: dict[str, Layout] = {
    "bert": Layout(**{**_BERT.__dict__, "heads": "bert"}),
    "paretune_bert": Layout(**{**_BERT.__dict__, "heads": "bert"}),
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": Layout(
        "transformer.layer", "attention.q_lin", "attention.k_lin", "attention.v_lin",
        "attention.out_lin", ("ffn.lin1",), ("ffn.lin2",), ffn_key="hidden_dim",
    ),
    "deberta-v2": Layout(
        "encoder.layer", "attention.self.query_proj", "attention.self.key_proj",
        "attention.self.value_proj", "attention.output.dense", ("intermediate.dense",),
        ("output.dense",),
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": Layout(
        "h", "attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj", ("mlp.c_fc",),
        ("mlp.c_proj",), ffn_key="n_inner",
    ),
}


def layout_of(model_type: str) -> Layout | None:
    return LAYOUTS.get(model_type)


def peft_task_type(ctx: Any) -> Any:
    """peft's task type: it keeps a classifier head trainable, or wraps a causal LM."""
    import peft

    return peft.TaskType.CAUSAL_LM if ctx.task["type"] == "causal_lm" else peft.TaskType.SEQ_CLS


def backbone(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def layout(model: Any) -> Layout:
    """The model's layout; a trial on a model without one fails (the space keeps the families
    that need it out, so this is a guard for values a user fixed)."""
    model_type = backbone(model).config.model_type
    found = layout_of(model_type)
    if found is None:
        raise TrialFailed(
            f"model type {model_type!r} has no layer layout in paretune; supported: "
            f"{', '.join(sorted(LAYOUTS))}."
        )
    return found


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _parent(root: Any, path: str) -> tuple[Any, str]:
    head, _, leaf = path.rpartition(".")
    return (_get(root, head) if head else root), leaf


def _base(model: Any) -> Any:
    task_model = backbone(model)
    return getattr(task_model, task_model.base_model_prefix)


def layer_list(model: Any) -> Any:
    return _get(_base(model), layout(model).layers)


def set_layer_list(model: Any, layers: Any) -> None:
    parent, attr = _parent(_base(model), layout(model).layers)
    setattr(parent, attr, layers)


def attention(layer: Any, lay: Layout) -> dict[str, tuple[Any, str]]:
    """``{"q", "k", "v", "o"}``: (parent module, attribute) of each attention projection."""
    return {name: _parent(layer, getattr(lay, name)) for name in ("q", "k", "v", "o")}


def ffn(layer: Any, lay: Layout) -> tuple[list[tuple[Any, str]], list[tuple[Any, str]]]:
    """The MLP's (parent, attribute) matrices whose outputs are neurons, and those whose
    inputs are."""
    return [_parent(layer, p) for p in lay.ffn_in], [_parent(layer, p) for p in lay.ffn_out]


def module_regex(lay: Layout, paths: tuple[str, ...] | list[str]) -> str:
    """A peft ``target_modules`` regex matching exactly these paths inside every layer."""
    inner = "|".join(re.escape(p) for p in dict.fromkeys(paths))
    return rf".*{re.escape(lay.layers)}\.\d+\.({inner})"


def head_modules(model: Any) -> list[str]:
    """Top-level modules of a task model outside its base: the task head (``classifier``,
    DistilBERT's ``pre_classifier``, DeBERTa's ``pooler``, a decoder's ``score``)."""
    task_model = backbone(model)
    prefix = task_model.base_model_prefix
    return [
        name for name, child in task_model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    ]


def new_head_modules(model: Any) -> list[str]:
    """The head modules the base checkpoint did not hold, initialized at random when it was
    loaded (``models.NEW_MODULES``); every head module where that was not recorded. A
    classifier fine-tuned already brings its head: it is not new."""
    from paretune.models import NEW_MODULES

    new = getattr(backbone(model), NEW_MODULES, None)
    heads = head_modules(model)
    return heads if new is None else [name for name in heads if name in new]


def tokenizer_kind(tokenizer: Any, vocab_size: int | None = None) -> str:
    """``SpaceInfo.tokenizer``: the model of a fast tokenizer's backend, lower-case
    (``wordpiece``, ``bpe``, ``unigram``, ``wordlevel``), or ``slow`` without one; said with
    its id count where it has more ids than the model's ``vocab_size`` embedding rows (a
    token added to the tokenizer alone: trimming keeps every special token, so it could
    not)."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "slow"
    kind = str(json.loads(backend.to_str())["model"]["type"]).lower()
    if vocab_size is not None and len(tokenizer) > vocab_size:
        return f"{kind} with {len(tokenizer)} ids for {vocab_size} embedding rows"
    return kind


def space_info(config: Any, task_type: str, device: str, objectives: tuple[str, ...],
               bf16: bool = True, measure_device: str | None = None,
               tokenizer: str = "") -> SpaceInfo:
    """``SpaceInfo`` from a transformers config (``hidden_size`` etc. are aliased per model
    type by transformers, e.g. GPT-2's ``n_embd``); latency is measured on ``device`` unless
    ``measure_device`` says otherwise; ``tokenizer`` is ``tokenizer_kind`` of the model's."""
    n_heads = int(config.num_attention_heads)
    lay = layout_of(config.model_type)
    ffn_key = lay.ffn_key if lay else "intermediate_size"
    width = getattr(config, ffn_key, None) or 4 * int(config.hidden_size)
    return SpaceInfo(
        model_type=config.model_type,
        n_layers=int(config.num_hidden_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
        hidden_size=int(config.hidden_size),
        intermediate_size=int(width),
        vocab_size=int(config.vocab_size),
        task_type=task_type,
        device=device,
        measure_device=measure_device or device,
        bf16=bf16,
        objectives=tuple(objectives),
        prefix_tuning=_takes_past_key_values(config),
        tokenizer=tokenizer,
    )


def prefix_tuning_runs(model_type: str) -> bool:
    """Whether peft can prefix-tune (``prefix``, ``ptuning``) a model of ``model_type`` under
    the installed transformers."""
    from transformers import AutoConfig

    return _takes_past_key_values(AutoConfig.for_model(model_type))


def _takes_past_key_values(config: Any) -> bool:
    """Prefix tuning feeds the prefixes as ``past_key_values``: models whose base forward has
    no such argument (DistilBERT, DeBERTa; in transformers 5.25, which renamed it ``cache``,
    every model) cannot be prefix-tuned by peft (0.21)."""
    import inspect

    from transformers import AutoModel

    try:
        cls: Any = AutoModel._model_mapping[type(config)]
    except KeyError:
        return False
    return "past_key_values" in inspect.signature(cls.forward).parameters
