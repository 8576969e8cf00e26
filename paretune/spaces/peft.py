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
from paretune.spaces._base import Choice, FamilyConfig, Stage, TrialContext, register_family

METHODS = ("none", "head", "lora", "dora", "adalora", "ia3", "prefix", "ptuning")
PROMPT_METHODS = ("prefix", "ptuning")
HEADS = ("classifier", "score")  # sequence-classification heads (BERT, Llama)

# IA3 (target modules, feed-forward modules) per architecture kind (see _layout.kind).
_IA3 = {
    "bert": (r".*(self\.(key|value)|output\.dense)$", r".*layer\.\d+\.output\.dense$"),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
}


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


def apply(model: Any, cfg: PeftConfig, ctx: TrialContext) -> Any:
    if cfg.method == "head":
        for name, p in model.named_parameters():
            p.requires_grad = name.split(".")[0] in HEADS
    elif cfg.method == "ia3":
        import peft

        from paretune.spaces import _layout

        targets, feedforward = _IA3[_layout.kind(model)]
        config = peft.IA3Config(
            task_type=_layout.peft_task_type(ctx),
            target_modules=targets,  # type: ignore[arg-type]  # a regex or a list of names
            feedforward_modules=feedforward,  # type: ignore[arg-type]
        )
        return peft.get_peft_model(model, config)
    return model


def merge(model: Any, cfg: PeftConfig, ctx: TrialContext) -> Any:
    """Fold trained adapters into the base weights: the artifact is a plain model."""
    from peft import PeftModel

    from paretune.spaces import _artifact

    if not isinstance(model, PeftModel):
        return model
    if cfg.method in PROMPT_METHODS:
        _unwrap_saved_modules(model.get_base_model())
        ctx.artifact_writer = _artifact.write_base_and_adapter
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
)
