"""Quantization: post-training at COMPRESS (default), or QLoRA's frozen 4-bit base at QUANT_TRAIN.

Every 2-D weight the artifact carries is quantized, embeddings included (MiniLM's word
embeddings alone are half its parameters), and stored packed: int8 codes, or two 4-bit
codes per byte, plus one fp16 scale per row (`channel`, `dynamic`) or per ``group_size``
values of a row (`group`, `nf4`). Biases and norms (1-D) are fp16. The artifact is one
safetensors file whose metadata describes the packing, next to ``config.json``;
``load_quantized(dir)`` rebuilds a runnable model from it.

Why a hand-written format rather than torchao: the packed int4/NF4 safetensors format here
covers Linear and Embedding weights alike on CPU with a ~100-line loader and no extra
dependency; torchao's CPU int4 layouts and tensor-subclass serialization depend on its
version, and embeddings need a separate config there. Quality is measured on exactly what
the loader rebuilds: the in-memory weights are replaced by their dequantized values, and
`dynamic` additionally runs Linear layers with PyTorch's dynamic int8 kernels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.spaces._base import Choice, FamilyConfig, Stage, TrialContext, register_family

__all__ = ["QuantConfig", "load_quantized", "pack", "unpack"]

BITS = (32, 16, 8, 4)
SCHEMES = ("channel", "group", "dynamic", "nf4")
MODES = ("ptq", "qlora")
WEIGHTS_FILE = "model.safetensors"
META_KEY = "paretune_quant"
# NF4 levels (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1].
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


@dataclass(frozen=True)
class QuantConfig(FamilyConfig):
    """bits: 32 (off), 16 (fp16), 8 or 4. scheme: `channel` (symmetric int, one scale per
    row), `group` (one scale per group_size values), `dynamic` (int8 weights per row and int8
    activations at run time; bits 8), `nf4` (4-bit NormalFloat per group; bits 4).
    group_size: values per scale for group / nf4. mode: `ptq` (after training) or `qlora`
    (train adapters on a frozen 4-bit NF4 base; needs a CUDA GPU and bitsandbytes).
    """

    bits: int = 32
    scheme: str = "channel"
    group_size: int = 64
    mode: str = "ptq"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ConfigError(f"quant.bits must be one of 32, 16, 8, 4, but got {self.bits!r}.")
        if self.scheme not in SCHEMES:
            raise ConfigError(
                f"quant.scheme must be one of {', '.join(SCHEMES)}, but got {self.scheme!r}."
            )
        if not (isinstance(self.group_size, int) and self.group_size >= 8):
            raise ConfigError(
                f"`quant.group_size >= 8` (an integer) must hold, but got {self.group_size!r}."
            )
        if self.mode not in MODES:
            raise ConfigError(
                f"quant.mode must be one of {', '.join(MODES)}, but got {self.mode!r}."
            )


def check(cfg: QuantConfig, ctx: TrialContext) -> None:
    """Combinations that cannot work fail here, before any training."""
    if cfg.bits in (32, 16) and cfg.mode == "ptq":
        return
    if cfg.scheme == "dynamic" and cfg.bits != 8:
        raise TrialFailed(f"quant.scheme dynamic is int8: it needs quant.bits 8, not {cfg.bits}.")
    if cfg.scheme == "nf4" and cfg.bits != 4:
        raise TrialFailed(f"quant.scheme nf4 is 4-bit: it needs quant.bits 4, not {cfg.bits}.")
    if cfg.scheme == "dynamic" and not ctx.device.startswith("cpu"):
        raise TrialFailed(
            "quant.scheme dynamic runs PyTorch's int8 CPU kernels, but the trial runs on "
            f"{ctx.device}; use quant.scheme channel or group there."
        )
    if cfg.mode == "qlora":
        if not ctx.device.startswith("cuda"):
            raise TrialFailed(
                f"quant.mode qlora trains on a 4-bit base, which needs a CUDA GPU "
                f"(bitsandbytes), but the trial runs on {ctx.device}; use quant.mode ptq."
            )
        if cfg.bits != 4 or cfg.scheme != "nf4":
            raise TrialFailed("quant.mode qlora needs quant.bits 4 and quant.scheme nf4.")
        if ctx.params.get("peft.method") not in ("lora", "dora", "adalora"):
            raise TrialFailed(
                "quant.mode qlora trains LoRA adapters on the frozen 4-bit base: it needs "
                f"peft.method lora, dora or adalora, not {ctx.params.get('peft.method')!r}."
            )


# --- packing ---------------------------------------------------------------------------


def _blocks(w: Any, size: int) -> Any:
    import torch.nn.functional as F

    rows, cols = w.shape
    pad = (-cols) % size
    return F.pad(w.float(), (0, pad)).view(rows, -1, size)


def pack(w: Any, bits: int, scheme: str, group_size: int) -> tuple[dict[str, Any], Any]:
    """Quantize a 2-D weight: ``({"q": codes, "s": fp16 scales}, dequantized weight)``."""
    import torch

    rows, cols = w.shape
    size = group_size if scheme in ("group", "nf4") else cols
    blocks = _blocks(w.detach(), size)
    absmax = blocks.abs().amax(-1, keepdim=True)
    if scheme == "nf4":
        scale = absmax.clamp_min(1e-7).half()
        levels = torch.tensor(NF4, device=w.device)
        codes = torch.empty(blocks.shape, dtype=torch.uint8, device=w.device)
        for start in range(0, rows, 1024):  # bounded memory on large embedding tables
            part = blocks[start : start + 1024] / scale[start : start + 1024].float()
            codes[start : start + 1024] = (part.unsqueeze(-1) - levels).abs().argmin(-1)
        deq = levels[codes.long()] * scale.float()
    else:
        qmax = 2 ** (bits - 1) - 1
        scale = (absmax / qmax).clamp_min(1e-7).half()
        q = torch.round(blocks / scale.float()).clamp(-qmax, qmax)
        deq = q * scale.float()
        codes = q.to(torch.int8) if bits == 8 else (q + 8).to(torch.uint8)
    codes = codes.view(rows, -1)
    if bits == 4:
        flat = codes.flatten()
        if flat.numel() % 2:
            flat = torch.cat([flat, flat.new_zeros(1)])
        codes = flat[0::2] | (flat[1::2] << 4)
    deq = deq.view(rows, -1)[:, :cols].to(w.dtype)
    return {"q": codes.contiguous(), "s": scale.view(rows, -1).contiguous()}, deq


def unpack(
    parts: dict[str, Any], shape: list[int], bits: int, scheme: str, group_size: int
) -> Any:
    """The dequantized fp32 weight of ``pack``'s output."""
    import torch

    rows, cols = shape
    scale = parts["s"].float()
    n_groups = scale.shape[1]
    size = group_size if scheme in ("group", "nf4") else cols
    codes = parts["q"]
    if bits == 4:
        flat = torch.stack([codes & 0x0F, codes >> 4], dim=1).flatten()
        codes = flat[: rows * n_groups * size]
    codes = codes.reshape(rows, n_groups, size)
    if scheme == "nf4":
        values = torch.tensor(NF4)[codes.long()]
    elif bits == 4:
        values = codes.float() - 8
    else:
        values = codes.float()
    return (values * scale.unsqueeze(-1)).view(rows, -1)[:, :cols]


# --- the family's hooks ---------------------------------------------------------------


def prepare(model: Any, cfg: QuantConfig, ctx: TrialContext) -> Any:
    """QUANT_TRAIN: check the combination; for QLoRA, freeze the layers' Linears in NF4."""
    check(cfg, ctx)
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
    """COMPRESS: pack every weight, put the dequantized values back, set the artifact writer."""
    import torch

    from paretune.spaces import _layout

    if cfg.bits == 32:
        return model
    base = _layout.backbone(model)
    if cfg.mode == "qlora":
        _dequantize_bnb(base)
    packed: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}  # packed weights; every other tensor is stored as is
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if not tensor.is_floating_point():
                packed[name] = tensor.detach().cpu().contiguous()
            elif tensor.dim() == 2 and cfg.bits < 16:
                parts, deq = pack(tensor, cfg.bits, cfg.scheme, cfg.group_size)
                packed[f"{name}.q"], packed[f"{name}.s"] = parts["q"].cpu(), parts["s"].cpu()
                shapes[name] = list(tensor.shape)
                tensor.copy_(deq)
            else:  # biases and norms (and, at 16 bits, everything): fp16
                packed[name] = tensor.detach().half().cpu().contiguous()
                tensor.copy_(packed[name].float())
    meta = {"bits": cfg.bits, "scheme": cfg.scheme, "group_size": cfg.group_size,
            "packed": shapes}
    if cfg.scheme == "dynamic" and cfg.bits == 8:
        _dynamic_int8(base)
    config = base.config

    def write(shipped: Any, directory: str) -> None:
        from safetensors.torch import save_file

        from paretune.spaces import _artifact

        os.makedirs(directory, exist_ok=True)
        config.architectures = [type(base).__name__]  # what load_quantized rebuilds
        config.save_pretrained(directory)
        save_file(packed, os.path.join(directory, WEIGHTS_FILE),
                  metadata={META_KEY: json.dumps(meta)})
        _artifact.save_adapter(shipped, directory)

    ctx.artifact_writer = write
    return model


def _dynamic_int8(model: Any) -> None:
    """Run every Linear with int8 weights (per row) and int8 activations quantized per batch."""
    import torch
    import torch.ao.quantization as tq

    qconfig = tq.per_channel_dynamic_qconfig
    tq.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)


def is_quantized(directory: str | os.PathLike[str]) -> bool:
    """True if ``directory`` holds weights packed by this family."""
    from safetensors import safe_open

    path = os.path.join(str(directory), WEIGHTS_FILE)
    if not os.path.isfile(path):
        return False
    with safe_open(path, framework="pt") as f:
        return META_KEY in (f.metadata() or {})


def _auto_class(config: Any) -> Any:
    """The transformers auto class an artifact's config was saved from."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    arch = (getattr(config, "architectures", None) or [""])[0]
    return AutoModelForCausalLM if arch.endswith("ForCausalLM") else (
        AutoModelForSequenceClassification
    )


def load_quantized(directory: str | os.PathLike[str]) -> Any:
    """Rebuild a runnable model (with its adapter, if one ships) from a quantized artifact."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from paretune.spaces import _artifact, _pruned_bert

    _pruned_bert.register()  # head-pruned BERTs have their own config class
    directory = str(directory)
    with safe_open(os.path.join(directory, WEIGHTS_FILE), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[META_KEY])
        stored = {k: f.get_tensor(k) for k in f.keys()}
    state = {}
    for name, shape in meta["packed"].items():
        parts = {"q": stored.pop(f"{name}.q"), "s": stored.pop(f"{name}.s")}
        state[name] = unpack(parts, shape, meta["bits"], meta["scheme"], meta["group_size"])
    for name, tensor in stored.items():
        state[name] = tensor.float() if tensor.dtype == torch.float16 else tensor
    config = AutoConfig.from_pretrained(directory)
    model = _auto_class(config).from_config(config)
    model.load_state_dict(state, strict=True)
    if meta["scheme"] == "dynamic" and meta["bits"] == 8:
        _dynamic_int8(model)
    return _artifact.attach_adapter(model.eval(), directory)


register_family(
    "quant",
    QuantConfig,
    prepare,
    stage=Stage.QUANT_TRAIN,
    knobs={
        "bits": Choice(*BITS),
        "scheme": Choice(*SCHEMES),
        "group_size": Choice(32, 64, 128),
        "mode": Choice("ptq"),  # qlora needs a GPU: name it in the config to search it
    },
    knob_when={
        "scheme": {"quant.bits": (8, 4)},
        "group_size": {"quant.scheme": ("group", "nf4")},
    },
    compress=quantize,
)
