"""How the model is adapted: which weights train (stage ADAPT), merged back after training.

`none` fine-tunes every weight and `head` only the classifier; `ia3` is applied here (it has
no knobs); `lora` / `dora` (lora.*), `adalora` (adalora.*) and `prefix` / `ptuning`
(prompt.*) are applied by their own families. At COMPRESS mergeable adapters are folded into
the base weights; prompt adapters cannot be, so they ship beside the base (``adapter/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError
from paretune.spaces import _layout
from paretune.spaces._base import (
    Choice,
    FamilyConfig,
    Shaped,
    SpaceInfo,
    Stage,
    TrialContext,
    register_family,
)

METHODS = ("none", "head", "lora", "dora", "adalora", "ia3", "prefix", "ptuning")
PROMPT_METHODS = ("prefix", "ptuning")
# Objectives that adapters can improve: they train fewer weights, faster. Merged adapters
# ship at the size of a full fine-tune, so for quality against artifact size alone the space
# offers the methods that can win on quality: the full fine-tune, LoRA, and IA3 (which
# matched the full fine-tune on BANKING77, bench/calibrate.py), not the head alone or
# prompts, which only cost accuracy there.
TRAINING_COSTS = ("trainable_params", "train_time_s")


@dataclass(frozen=True)
class PeftConfig(FamilyConfig):
    """method: `none` (full fine-tune), `head` (classifier only), `lora`, `dora` (weight-
    decomposed LoRA), `adalora` (adaptive rank), `ia3` (learned rescaling vectors), `prefix`
    (prefix tuning with an MLP reparametrization) or `ptuning` (P-tuning v2: deep prompts
    trained directly, no reparametrization), all through peft.
    """

    method: str = "lora"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"peft.method must be one of {', '.join(METHODS)}, but got {self.method!r}."
            )


def shape(info: SpaceInfo) -> Shaped:
    """The methods that can run on this model and task and can move the study's objectives,
    with one line on those the model cannot run."""
    has_layout = _layout.layout_of(info.model_type) is not None
    methods = ["none", "lora"] + (["ia3"] if has_layout else [])
    cannot = [] if has_layout else [
        f"ia3 (paretune has no layer layout for model type {info.model_type!r})"]
    if any(o in TRAINING_COSTS for o in info.objectives):
        methods += ["dora", "adalora"]
        methods += ["head"] if info.task_type == "classification" else []
        methods += list(PROMPT_METHODS) if info.prefix_tuning else []
        if not info.prefix_tuning:
            cannot.append(f"prefix and ptuning (model type {info.model_type!r} does not take "
                          f"trained prefixes as past_key_values in transformers "
                          f"{_transformers()})")
    note = f"peft.method leaves out {'; '.join(cannot)}." if cannot else ""
    return Shaped({"method": Choice(*methods)}, note)


def check(cfg: PeftConfig, info: SpaceInfo) -> None:
    if cfg.method in PROMPT_METHODS and not info.prefix_tuning:
        raise ConfigError(
            f"peft.method {cfg.method} feeds trained prefixes as past_key_values, which model "
            f"type {info.model_type!r} does not take in transformers {_transformers()}; "
            f"choose lora, dora, adalora, ia3 or none."
        )
    if cfg.method == "head" and info.task_type != "classification":
        raise ConfigError("peft.method head trains a classifier head; a causal_lm task has "
                          "none: choose another method.")
    if cfg.method == "ia3" and _layout.layout_of(info.model_type) is None:
        raise ConfigError(
            f"peft.method ia3 needs the layer layout of the model, which paretune does not "
            f"know for model type {info.model_type!r}; choose lora (targets all-linear)."
        )


def _transformers() -> str:
    import transformers

    return str(transformers.__version__)


def head_modules(model: Any, ctx: TrialContext) -> list[str] | None:
    """Modules a classification adapter trains fully next to it (the new task head)."""
    return _layout.head_modules(model) if ctx.task["type"] == "classification" else None


def apply(model: Any, cfg: PeftConfig, ctx: TrialContext) -> Any:
    if cfg.method == "head":
        heads = set(_layout.head_modules(model))
        for name, p in model.named_parameters():
            p.requires_grad = name.split(".")[0] in heads
    elif cfg.method == "ia3":
        import peft

        lay = _layout.layout(model)
        config = peft.IA3Config(
            task_type=_layout.peft_task_type(ctx),
            target_modules=_layout.module_regex(lay, [lay.k, lay.v, *lay.ffn_out]),
            feedforward_modules=_layout.module_regex(lay, lay.ffn_out),
            modules_to_save=head_modules(model, ctx),
        )
        return peft.get_peft_model(model, config)
    return model


def merge(model: Any, cfg: PeftConfig, ctx: TrialContext) -> Any:
    """Fold trained adapters into the base weights: the artifact is a plain model. A prompt
    adapter cannot be folded: it stays a peft model, saved in the ``adapter`` format."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    # the trained task head goes back into the base first: peft's merge cannot unwrap a head
    # that is not a single Linear (RoBERTa's dense + out_proj, say)
    _unwrap_saved_modules(model.get_base_model())
    if cfg.method in PROMPT_METHODS:
        return model
    return model.merge_and_unload()


def _unwrap_saved_modules(base: Any) -> None:
    """Put the trained copy of each fully trained module (the head) back in the base model."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent = base.get_submodule(name.rpartition(".")[0]) if "." in name else base
            setattr(parent, name.rpartition(".")[2], next(iter(module.modules_to_save.values())))


register_family(
    "peft",
    PeftConfig,
    apply,
    stage=Stage.ADAPT,
    knobs={"method": Choice(*METHODS)},
    compress=merge,
    shape=shape,
    check=check,
)
