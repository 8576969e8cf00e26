"""BERT with fewer attention heads than hidden_size / head size: what head pruning ships.

transformers 5 dropped ``prune_heads``; BERT derives its head size from
``hidden_size / num_attention_heads``, so a BERT whose heads were removed cannot be described
by ``BertConfig``. This config adds an explicit ``head_dim`` (as Llama's has). The module is
self-contained (torch and transformers only): ``save_pretrained`` copies it next to the
weights, so the artifact reloads with ``from_pretrained(dir, trust_remote_code=True)``, or
without remote code once ``register()`` ran in the process.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)


class PrunedBertConfig(BertConfig):
    model_type = "paretune_bert"

    def __init__(self, head_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_dim = head_dim or self.hidden_size // self.num_attention_heads


def shrink_attention(layer: Any, n_heads: int, head_dim: int) -> None:
    """Resize one BertLayer's attention to ``n_heads`` heads of ``head_dim`` (new weights)."""
    self_attn, out = layer.attention.self, layer.attention.output
    hidden, inner = out.dense.out_features, n_heads * head_dim
    for name in ("query", "key", "value"):
        setattr(self_attn, name, nn.Linear(hidden, inner))
    out.dense = nn.Linear(inner, hidden)
    self_attn.num_attention_heads = n_heads
    self_attn.attention_head_size = head_dim
    self_attn.all_head_size = inner


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig) -> None:
        full = copy.deepcopy(config)  # build BERT's modules at full width, then shrink them
        full.num_attention_heads = config.hidden_size // config.head_dim
        super().__init__(full)
        # the attention kernel (sdpa / eager) was resolved on ``full`` during __init__
        config._attn_implementation_internal = full._attn_implementation_internal
        self.config = config
        for module in self.modules():
            if hasattr(module, "config") and module.config is full:
                module.config = config  # type: ignore[assignment]
        for layer in self.bert.encoder.layer:
            shrink_attention(layer, config.num_attention_heads, config.head_dim)
        self.post_init()


_REGISTERED = False


def register() -> None:
    """Make Auto* classes know ``paretune_bert``; ``save_pretrained`` then ships this file."""
    global _REGISTERED
    if _REGISTERED:
        return
    AutoConfig.register("paretune_bert", PrunedBertConfig)
    AutoModelForSequenceClassification.register(
        PrunedBertConfig, PrunedBertForSequenceClassification
    )
    PrunedBertConfig.register_for_auto_class()
    PrunedBertForSequenceClassification.register_for_auto_class(
        "AutoModelForSequenceClassification"
    )
    _REGISTERED = True
