"""Pruning before training (stage PRUNE), made permanent after it (stage COMPRESS).

`unstructured` zeroes the smallest-magnitude weights of every Linear inside the transformer
layers (L1, ``torch.nn.utils.prune``); the zeros are kept through training by masking their
gradients and re-applied after adapters are merged, so the artifact carries exactly them.
`heads` and `ffn` physically remove attention heads (whole key/value groups under
grouped-query attention) or MLP neurons, the same number in every layer so the config still
describes the model: matrices shrink, so size_mb and latency_ms drop.

Unstructured zeros are stored dense, so they lower neither size_mb nor latency_ms: the
default space offers `heads` and `ffn` only (list `unstructured` in the config to search it,
e.g. to study sparsity against quality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.spaces import _layout
from paretune.spaces._base import (
    Choice,
    FamilyConfig,
    Float,
    SpaceInfo,
    Stage,
    TrialContext,
    register_family,
)

SCHEMES = ("unstructured", "heads", "ffn")
SCOPES = ("global", "layer")
_MASK = "_paretune_prune_mask"  # plain attribute: not a buffer, so never saved


@dataclass(frozen=True)
class PruneConfig(FamilyConfig):
    """ratio: fraction removed (weights, heads or neurons), in [0, 0.9]. scheme: `unstructured`
    (L1 magnitude), `heads` (attention heads by weight magnitude) or `ffn` (MLP neurons).
    scope: for unstructured, rank weights over all layers (`global`) or within each (`layer`).
    """

    ratio: float = 0.0
    scheme: str = "unstructured"
    scope: str = "global"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 0.9:
            raise ConfigError(f"`0 <= prune.ratio <= 0.9` must hold, but got {self.ratio}.")
        if self.scheme not in SCHEMES:
            raise ConfigError(
                f"prune.scheme must be one of {', '.join(SCHEMES)}, but got {self.scheme!r}."
            )
        if self.scope not in SCOPES:
            raise ConfigError(
                f"prune.scope must be one of {', '.join(SCOPES)}, but got {self.scope!r}."
            )


def layer_linears(model: Any) -> list[Any]:
    import torch.nn as nn

    return [m for layer in _layout.layer_list(model) for m in layer.modules()
            if isinstance(m, nn.Linear)]


def unstructured(model: Any, cfg: PruneConfig) -> None:
    from torch.nn.utils import prune

    modules = layer_linears(model)
    if cfg.scope == "global":
        prune.global_unstructured(
            [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured,
            amount=cfg.ratio,
        )
    else:
        for m in modules:
            prune.l1_unstructured(m, "weight", amount=cfg.ratio)
    for m in modules:
        mask = m.weight_mask.detach().clone()
        prune.remove(m, "weight")  # weight is a plain Parameter again, zeros included
        setattr(m, _MASK, mask)
        # Masked gradients keep AdamW's update (and decoupled decay) of a zero at zero.
        m.weight.register_hook(lambda grad, mask=mask: grad * mask)


def sparsity(model: Any) -> float:
    """Fraction of zeros over the weights the unstructured scheme prunes."""
    weights = [m.weight for m in layer_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def _take(linear: Any, idx: Any, dim: int) -> Any:
    """A copy of a Linear keeping output features (dim 0) or input features (dim 1) ``idx``.

    GPT-2's Conv1D stores its weight transposed ([in, out]); it is copied the same way.
    """
    import copy

    import torch.nn as nn

    conv1d = type(linear).__name__ == "Conv1D"
    axis = (1 - dim) if conv1d else dim
    weight = linear.weight.detach().index_select(axis, idx).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, idx).clone()
    new = copy.copy(linear)  # same class and settings; new parameters below
    new._parameters = dict(linear._parameters)
    new.weight = nn.Parameter(weight)
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().clone())
    if conv1d:
        new.nf = weight.shape[1]
    else:
        new.out_features, new.in_features = weight.shape
    return new


def _n_keep(n: int, ratio: float) -> int:
    return max(1, int(round(n * (1.0 - ratio))))


def heads(model: Any, cfg: PruneConfig) -> None:
    """Remove the least important heads (key/value groups under GQA) from every layer.

    Importance of a head (group) = L1 norm of its rows of Q, K, V and its columns of O."""
    import torch

    base = _layout.backbone(model)
    config, lay = base.config, _layout.layout(model)
    if lay.heads is None:
        raise TrialFailed(f"prune.scheme heads is not supported for {config.model_type!r}.")
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    per_group = n_heads // n_kv
    keep_groups = _n_keep(n_kv, cfg.ratio)
    if keep_groups == n_kv:
        return
    for layer in _layout.layer_list(model):
        parts = _layout.attention(layer, lay)
        mod = {name: getattr(parent, attr) for name, (parent, attr) in parts.items()}
        q = mod["q"].weight.detach().abs().view(n_kv, per_group * head_dim, -1).sum((1, 2))
        o = mod["o"].weight.detach().abs().view(-1, n_kv, per_group * head_dim).sum((0, 2))
        k = mod["k"].weight.detach().abs().view(n_kv, head_dim, -1).sum((1, 2))
        v = mod["v"].weight.detach().abs().view(n_kv, head_dim, -1).sum((1, 2))
        groups = torch.topk(q + k + v + o, keep_groups).indices.sort().values
        q_rows = _rows(groups, per_group * head_dim)
        kv_rows = _rows(groups, head_dim)
        for name, rows, dim in (("q", q_rows, 0), ("k", kv_rows, 0), ("v", kv_rows, 0),
                                ("o", q_rows, 1)):
            parent, attr = parts[name]
            setattr(parent, attr, _take(mod[name], rows, dim))
        if lay.heads == "bert":
            holder = parts["q"][0]
            holder.num_attention_heads = keep_groups
            holder.all_head_size = keep_groups * head_dim
    if lay.heads == "gqa":
        config.num_attention_heads = keep_groups * per_group
        config.num_key_value_heads = keep_groups
        config.head_dim = head_dim
    else:
        _to_pruned_bert(base, keep_groups, head_dim)


def _rows(groups: Any, width: int) -> Any:
    import torch

    return torch.cat([torch.arange(g * width, (g + 1) * width) for g in groups.tolist()]).to(
        groups.device
    )


def _to_pruned_bert(base: Any, n_heads: int, head_dim: int) -> None:
    """Re-label a head-pruned BERT so its saved config describes it and reloads."""
    from paretune.spaces import _pruned_bert

    _pruned_bert.register()
    old = base.config
    values = {**old.to_dict(), "num_attention_heads": n_heads, "head_dim": head_dim}
    values.pop("model_type", None)
    new = _pruned_bert.PrunedBertConfig(**values)
    new.architectures = ["PrunedBertForSequenceClassification"]
    # the attention kernel chosen at load time (sdpa / eager) is not part of to_dict()
    new._attn_implementation_internal = getattr(old, "_attn_implementation_internal", None)
    for module in base.modules():
        if getattr(module, "config", None) is old:
            module.config = new
    base.__class__ = _pruned_bert.PrunedBertForSequenceClassification


def ffn(model: Any, cfg: PruneConfig) -> None:
    """Remove the least important MLP neurons (L1 of their rows in and column out)."""
    import torch

    config, lay = _layout.backbone(model).config, _layout.layout(model)
    n = getattr(config, lay.ffn_key, None) or 4 * config.hidden_size
    keep = _n_keep(n, cfg.ratio)
    if keep == n:
        return

    def neuron_norms(module: Any, dim: int) -> Any:  # L1 per neuron; Conv1D is transposed
        axis = 1 - dim if type(module).__name__ == "Conv1D" else dim
        return module.weight.detach().abs().sum(1 - axis)

    for layer in _layout.layer_list(model):
        ins, outs = _layout.ffn(layer, lay)
        score = sum(neuron_norms(getattr(p, a), 0) for p, a in ins)
        score = score + sum(neuron_norms(getattr(p, a), 1) for p, a in outs)
        idx = torch.topk(score, keep).indices.sort().values
        for parent, attr in ins:
            setattr(parent, attr, _take(getattr(parent, attr), idx, 0))
        for parent, attr in outs:
            setattr(parent, attr, _take(getattr(parent, attr), idx, 1))
    setattr(config, lay.ffn_key, keep)


def apply(model: Any, cfg: PruneConfig, ctx: TrialContext) -> Any:
    if cfg.ratio == 0.0:
        return model
    {"unstructured": unstructured, "heads": heads, "ffn": ffn}[cfg.scheme](model, cfg)
    return model


def make_permanent(model: Any, cfg: PruneConfig, ctx: TrialContext) -> Any:
    """Re-apply the unstructured masks after adapters were merged into the pruned weights."""
    import torch

    if cfg.scheme != "unstructured" or cfg.ratio == 0.0:
        return model
    with torch.no_grad():
        for m in layer_linears(model):
            mask = getattr(m, _MASK, None)
            if mask is None:
                raise TrialFailed("prune: a pruned layer lost its mask before COMPRESS.")
            m.weight.mul_(mask.to(m.weight.device, m.weight.dtype))
    ctx.stats["sparsity"] = sparsity(model)
    return model


def _prunes(ratio: float) -> bool:
    return ratio > 0


def shape(info: SpaceInfo) -> dict[str, Any] | str:
    """Structured removal only (it is what lowers size and latency), up to half the heads or
    neurons; heads where the model's config can describe fewer of them."""
    lay = _layout.layout_of(info.model_type)
    if lay is None:
        return f"paretune does not know where model type {info.model_type!r} keeps its layers"
    schemes = (["heads"] if lay.heads and info.n_kv_heads > 1 else []) + ["ffn"]
    return {"ratio": Float(0.0, 0.5, step=0.1), "scheme": Choice(*schemes)}


def check(cfg: PruneConfig, info: SpaceInfo) -> None:
    if cfg.ratio == 0.0:
        return
    lay = _layout.layout_of(info.model_type)
    if lay is None:
        raise ConfigError(
            f"prune needs the layer layout of the model, which paretune does not know for "
            f"model type {info.model_type!r}; set prune.ratio: 0."
        )
    if cfg.scheme == "heads" and lay.heads is None:
        raise ConfigError(
            f"prune.scheme heads cannot be described by the config of model type "
            f"{info.model_type!r}; use prune.scheme ffn."
        )


register_family(
    "prune",
    PruneConfig,
    apply,
    stage=Stage.PRUNE,
    knobs={
        "ratio": Float(0.0, 0.9, step=0.05),
        "scheme": Choice(*SCHEMES),
        "scope": Choice(*SCOPES),
    },
    knob_when={
        "scheme": {"prune.ratio": _prunes},
        "scope": {"prune.ratio": _prunes, "prune.scheme": "unstructured"},
    },
    compress=make_permanent,
    shape=shape,
    check=check,
)
