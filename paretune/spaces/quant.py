"""Quantization: the precision the weights ship in, run by a runtime that has its kernels.

``quant.format`` names the weights (fp32, fp16, bf16, int8, 4-bit per group of 32 / 64 / 128
values, 4-bit NormalFloat); where the artifact is served, the device latency is measured on
(``measure.device``), decides which standard runtime ships it (``saved_format``):

- fp32, fp16, bf16: transformers safetensors in that dtype, run by torch on either device.
- int8: on the CPU, ONNX Runtime with int8 weights per row and activations quantized to
  int8 per batch (``MatMulInteger``; embeddings int8); on a GPU, transformers + torchao,
  int8 weights per row with bf16 activations.
- int4-gN: on the CPU, ONNX Runtime with 4-bit weights per block of N (``MatMulNBits``;
  embeddings 4-bit, ``GatherBlockQuantized``); on a GPU, transformers + torchao, 4-bit per
  group of N (tinygemm) with bf16 activations, embeddings bf16.
- nf4-g64: on a GPU, transformers + bitsandbytes NF4 (blocks of 64), embeddings bf16; no CPU
  runtime, so never offered there.

Every artifact loads without paretune (``paretune.spaces._formats``), and the trial measures
quality and latency on the artifact as that runtime loads it. fp16 has no fast kernels on
CPUs and bf16 only on CPUs with AVX512-BF16 or AMX: where latency is an objective, those are
not offered on the CPU (they stay size choices otherwise). The in-memory model is not
changed here: the COMPRESS hook only names the saved format; the artifact writer quantizes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
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

__all__ = ["FORMATS", "QuantConfig", "estimated_size_mb", "offered", "saved_format"]

# quant.format -> (bits of a weight, values per scale; 0: one scale per row)
FORMATS: dict[str, tuple[int, int]] = {
    "fp32": (32, 0),
    "fp16": (16, 0),
    "bf16": (16, 0),
    "int8": (8, 0),
    "int4-g32": (4, 32),
    "int4-g64": (4, 64),
    "int4-g128": (4, 128),
    "nf4-g64": (4, 64),
}
HALF = ("fp16", "bf16")
MODES = ("ptq", "qlora")
# the package a format needs where it is served: (format prefix, device) -> import name
_NEEDS = {("int", "cpu"): "onnxruntime", ("int", "cuda"): "torchao",
          ("nf4", "cuda"): "bitsandbytes"}


@dataclass(frozen=True)
class QuantConfig(FamilyConfig):
    """format: `fp32` (off), `fp16` / `bf16` (half-precision weights), `int8` (int8 weights,
    one scale per row), `int4-gN` (4-bit weights, one scale per N values of a row), `nf4-g64`
    (4-bit NormalFloat, QLoRA's data type; CUDA). mode: `ptq` (after training) or `qlora`
    (train adapters on a frozen NF4 base; needs a CUDA GPU, bitsandbytes and nf4-g64).
    """

    format: str = "fp32"
    mode: str = "ptq"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(
                f"quant.format must be one of {', '.join(FORMATS)}, but got {self.format!r}."
            )
        if self.mode not in MODES:
            raise ConfigError(
                f"quant.mode must be one of {', '.join(MODES)}, but got {self.mode!r}."
            )

    @property
    def bits(self) -> int:
        return FORMATS[self.format][0]

    @property
    def group_size(self) -> int:
        return FORMATS[self.format][1]


def saved_format(fmt: str, device: str) -> tuple[str, dict[str, Any]] | None:
    """(saved format, its options) of quant.format ``fmt`` served on ``device`` (cpu or
    cuda), or None where no runtime runs it there."""
    if fmt == "fp32" or fmt in HALF:
        return "transformers", {"dtype": fmt}
    weights = fmt.split("-")[0]
    block = FORMATS[fmt][1]
    if weights == "nf4":
        return ("bitsandbytes", {}) if device == "cuda" else None
    return ("onnx" if device == "cpu" else "torchao"), {"weights": weights, "block": block}


def _needs(fmt: str, device: str) -> str | None:
    return _NEEDS.get((fmt[:3], device))


# the oldest release whose saved form transformers writes for every format paretune asks
# of it (torchao 0.16: int8 weight-only as Int8Tensor; older int8 has no safetensors form)
_OLDEST = {"torchao": "0.16"}


def _installed(module: str | None) -> bool:
    if module is None:
        return True
    if importlib.util.find_spec(module) is None:
        return False
    if module not in _OLDEST:
        return True
    from packaging.version import Version  # transformers' own dependency

    return Version(importlib.metadata.version(module)) >= Version(_OLDEST[module])


def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (AVX512-BF16 or AMX), so bf16 weights run faster
    than fp32 there; elsewhere PyTorch emulates bf16, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# models whose layers share one set of weights: ONNX Runtime's quantizers quantize the first
# use only and keep an fp32 copy for the others (ALBERT: int8 1.37 MB against fp32 1.07)
SHARED_LAYERS = ("albert",)


def _shared_onnx(fmt: str, info: SpaceInfo) -> bool:
    saved = saved_format(fmt, info.measure_device)
    return info.model_type in SHARED_LAYERS and saved is not None and saved[0] == "onnx"


def offered(info: SpaceInfo) -> list[str]:
    """The formats a study offers: a runtime runs them on the device latency is measured on
    (``info.measure_device``) and its package is installed. Half precision without fast
    kernels (fp16 on CPUs; bf16 on CPUs without AVX512-BF16 / AMX) is offered only when
    latency is not an objective: there it would only ever be slower than fp32. Models of
    shared layers get no ONNX int8 / int4 (``SHARED_LAYERS``): they came out larger."""
    device = info.measure_device
    latency = "latency_ms" in info.objectives
    out = []
    for fmt in FORMATS:
        if saved_format(fmt, device) is None or not _installed(_needs(fmt, device)):
            continue
        slow = fmt == "fp16" or (fmt == "bf16" and not cpu_has_bf16())
        if device == "cpu" and latency and slow:
            continue
        if device == "cuda" and fmt == "bf16" and not info.bf16:
            continue
        if _shared_onnx(fmt, info):
            continue
        out.append(fmt)
    return out


def shape(info: SpaceInfo) -> dict[str, Any]:
    """Every format that runs, in a standard runtime with its kernels, where the study
    measures; QLoRA only if the config lists it (it changes how adapters train)."""
    return {"format": Choice(*offered(info))}


def check(cfg: QuantConfig, info: SpaceInfo) -> None:
    """Formats and modes that cannot run where the study trains and measures."""
    device = info.measure_device
    if saved_format(cfg.format, device) is None:
        raise ConfigError(
            f"quant.format {cfg.format} runs in bitsandbytes on a CUDA GPU, but artifacts are "
            f"measured on {device} (measure.device); use int4-g64 there."
        )
    if _shared_onnx(cfg.format, info):
        raise ConfigError(
            f"quant.format {cfg.format}: a {info.model_type} model shares one set of weights "
            "between its layers, and ONNX Runtime's quantizer stores them larger than fp32 "
            "(served on the CPU); use fp32, fp16 or bf16 there."
        )
    need = _needs(cfg.format, device)
    if not _installed(need):
        pip = "onnxruntime onnx" if need == "onnxruntime" else need
        oldest = _OLDEST.get(need or "")
        raise ConfigError(
            f"quant.format {cfg.format} on {device} ships for {need}"
            f"{' >= ' + oldest if oldest else ''}, which is not installed: "
            f"pip install -U {pip}."
        )
    if cfg.mode == "qlora":
        if info.device != "cuda" or not _installed("bitsandbytes"):
            raise ConfigError(
                "quant.mode qlora trains on a 4-bit base through bitsandbytes on a CUDA GPU; "
                f"trials run on {info.device}"
                f"{'' if _installed('bitsandbytes') else ' without bitsandbytes'}: "
                "use quant.mode ptq."
            )


# --- the family's hooks ---------------------------------------------------------------


def prepare(model: Any, cfg: QuantConfig, ctx: TrialContext) -> Any:
    """QUANT_TRAIN: for QLoRA, freeze the layers' Linears in NF4."""
    if cfg.mode != "qlora":
        return model
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise TrialFailed(
            "quant.mode qlora needs bitsandbytes: pip install bitsandbytes"
        ) from None
    import torch
    import torch.nn as nn

    from paretune.spaces import _layout

    for layer in _layout.layer_list(model):
        for name, module in list(layer.named_modules()):
            if not isinstance(module, nn.Linear):
                continue
            new = bnb.nn.Linear4bit(
                module.in_features, module.out_features, bias=module.bias is not None,
                compute_dtype=torch.bfloat16, quant_type="nf4",
            )
            new.weight = bnb.nn.Params4bit(
                module.weight.data.cpu(), requires_grad=False, quant_type="nf4"
            )
            if module.bias is not None:
                new.bias = nn.Parameter(module.bias.data.cpu(), requires_grad=False)
            parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
            setattr(parent, name.rpartition(".")[2], new.to(ctx.device))
    # peft wraps bitsandbytes layers with its 4-bit LoRA layers (whose merge dequantizes)
    # only when the model says it is loaded in 4 bits, as from_pretrained would have set
    model.is_loaded_in_4bit = True
    return model


def _dequantize_bnb(model: Any) -> None:
    """Turn QLoRA's 4-bit Linears (adapters already merged) back into float Linears."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    import torch.nn as nn

    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            new.weight.data = w.float()
            if module.bias is not None:
                new.bias.data = module.bias.data.float()
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], new.to(w.device))


def quantize(model: Any, cfg: QuantConfig, ctx: TrialContext) -> Any:
    """COMPRESS: name the saved format (the writer quantizes); QLoRA's 4-bit layers, whose
    adapters were merged, go back to float Linears first."""
    from paretune.spaces import _layout

    if cfg.mode == "qlora":
        base = _layout.backbone(model)
        _dequantize_bnb(base)
        base.is_loaded_in_4bit = False  # float again: saved as the format says
    device = ctx.info.measure_device if ctx.info is not None else "cpu"
    found = saved_format(cfg.format, device)
    if found is None:
        raise TrialFailed(f"quant.format {cfg.format} has no runtime on {device}.")
    ctx.saved_format, ctx.save_options = found
    return model


def estimated_size_mb(model: Any, cfg: QuantConfig) -> float:
    """A lower bound of size_mb (10^6 bytes) for ``cfg.format``, from the model's parameters
    before training: every 2-D weight at the format's bits, everything else at 16 bits (32 in
    fp32). Every runtime stores at least that (scales, zero points, the config and the graph
    come on top; some keep embeddings or norms wider), which is what early stopping needs: it
    never makes a trial look bigger than it will be."""
    from paretune.spaces import _layout

    total = 0.0
    for p in _layout.backbone(model).parameters():
        if cfg.bits >= 16 or p.dim() != 2:
            total += p.numel() * (4 if cfg.bits == 32 else 2)
        else:
            total += p.numel() * cfg.bits / 8
    return total / 1e6


register_family(
    "quant",
    QuantConfig,
    prepare,
    stage=Stage.QUANT_TRAIN,
    knobs={
        "format": Choice(*FORMATS),
        "mode": Choice("ptq"),  # qlora needs a GPU: name it in the config to search it
    },
    knob_when={
        # a prompt adapter ships beside an fp32 base: its prefixes run in peft's torch code
        "format": {"peft.method": lambda m: m not in ("prefix", "ptuning")},
        # QLoRA freezes an NF4 base under LoRA-style adapters: only on that branch
        "mode": {"quant.format": ("nf4-g64",), "peft.method": ("lora", "dora", "adalora")},
    },
    compress=quantize,
    shape=shape,
    check=check,
)
