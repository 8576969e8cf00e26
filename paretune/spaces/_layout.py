"""Where the parts of a supported architecture live: one table, read by arch and prune.

BERT-style encoders (``bert``, and ``paretune_bert`` after head pruning) and Llama-style
decoders (``llama``: grouped-query attention, gated MLP) are supported.
"""

from __future__ import annotations

from typing import Any

from paretune.errors import TrialFailed

__all__ = [
    "attention", "backbone", "ffn", "kind", "layer_list", "peft_task_type", "set_layer_list",
]

BERT_TYPES = ("bert", "paretune_bert")
LLAMA_TYPES = ("llama",)


def peft_task_type(ctx: Any) -> Any:
    """peft's task type: it keeps a classifier head trainable, or wraps a causal LM."""
    import peft

    return peft.TaskType.CAUSAL_LM if ctx.task["type"] == "causal_lm" else peft.TaskType.SEQ_CLS


def backbone(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def kind(model: Any) -> str:
    model_type = backbone(model).config.model_type
    if model_type in BERT_TYPES:
        return "bert"
    if model_type in LLAMA_TYPES:
        return "llama"
    raise TrialFailed(
        f"model type {model_type!r} is not supported by arch / prune; supported: "
        f"{', '.join(BERT_TYPES + LLAMA_TYPES)}."
    )


def _holder(model: Any) -> tuple[Any, str]:
    base = backbone(model)
    if kind(model) == "bert":
        return base.bert.encoder, "layer"
    return base.model, "layers"


def layer_list(model: Any) -> Any:
    holder, attr = _holder(model)
    return getattr(holder, attr)


def set_layer_list(model: Any, layers: Any) -> None:
    holder, attr = _holder(model)
    setattr(holder, attr, layers)


def attention(layer: Any, model_kind: str) -> dict[str, Any]:
    """``{"q", "k", "v", "o"}`` Linear modules of one layer, plus the module holding them."""
    if model_kind == "bert":
        a = layer.attention
        return {"q": a.self.query, "k": a.self.key, "v": a.self.value, "o": a.output.dense,
                "self": a.self, "out": a.output}
    a = layer.self_attn
    return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj, "self": a, "out": a}


def ffn(layer: Any, model_kind: str) -> tuple[list[tuple[Any, str]], list[tuple[Any, str]]]:
    """The MLP's (parent, attribute) Linears whose rows are neurons, and those whose columns
    are."""
    if model_kind == "bert":
        return [(layer.intermediate, "dense")], [(layer.output, "dense")]
    mlp = layer.mlp
    return [(mlp, "gate_proj"), (mlp, "up_proj")], [(mlp, "down_proj")]
