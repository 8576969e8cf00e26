"""Prompt learning through peft (stage ADAPT): trained virtual key/value prefixes in every layer.

`prefix` reparametrizes the prefixes through an MLP while training (Li & Liang); `ptuning`
trains them directly (P-tuning v2). Neither can merge into weights: the adapter ships beside
the base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.spaces import _layout
from paretune.spaces._base import Choice, FamilyConfig, Stage, TrialContext, register_family


@dataclass(frozen=True)
class PromptConfig(FamilyConfig):
    """virtual_tokens: number of trained prefix positions per layer."""

    virtual_tokens: int = 10

    def __post_init__(self) -> None:
        if not (isinstance(self.virtual_tokens, int) and self.virtual_tokens >= 1):
            raise ConfigError(
                f"`prompt.virtual_tokens >= 1` (an integer) must hold, but got "
                f"{self.virtual_tokens}."
            )


def apply(model: Any, cfg: PromptConfig, ctx: TrialContext) -> Any:
    import peft

    from paretune.spaces.peft import head_modules

    config = model.config
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    reparam = ctx.params.get("peft.method") == "prefix"
    prompt = peft.PrefixTuningConfig(
        task_type=_layout.peft_task_type(ctx),
        num_virtual_tokens=cfg.virtual_tokens,
        # keys/values of the prefix have the (possibly pruned, grouped) attention's width
        token_dim=n_kv * head_dim,
        num_attention_heads=n_kv,
        num_layers=config.num_hidden_layers,
        prefix_projection=reparam,
        encoder_hidden_size=config.hidden_size,
        modules_to_save=head_modules(model, ctx),
    )
    try:
        return peft.get_peft_model(model, prompt)
    except Exception as exc:  # an architecture peft cannot prefix-tune
        raise TrialFailed(f"peft.method {ctx.params.get('peft.method')}: {exc}") from exc


register_family(
    "prompt",
    PromptConfig,
    apply,
    stage=Stage.ADAPT,
    when={"peft.method": ("prefix", "ptuning")},
    knobs={"virtual_tokens": Choice(5, 10, 20)},
)
