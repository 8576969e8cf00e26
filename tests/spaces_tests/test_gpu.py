"""GPU-only paths: QLoRA (a frozen 4-bit NF4 base through bitsandbytes, LoRA trained on top),
half-precision training, and every family on CUDA. Skipped without a GPU."""

from __future__ import annotations

from typing import Any

import pytest

from paretune.search import parse_config
from paretune.trial import TrialSpec, run_trial

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BASE = {"train.lr": 3e-3, "train.epochs": 2, "train.batch_size": 16,
        "train.weight_decay": 0.0, "peft.method": "none"}
LORA = {"peft.method": "lora", "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.0,
        "lora.targets": "all-linear"}


def _run(raw: dict[str, Any], **params: Any) -> Any:
    raw["launcher"] = {"device": "cuda"}
    cfg = parse_config(raw)
    return run_trial(TrialSpec(0, {**BASE, **params}, cfg.context()))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_qlora_trains_lora_on_a_frozen_nf4_base(
    arch: str, raw_config: dict[str, Any], family_models: dict[str, str]
) -> None:
    pytest.importorskip("bitsandbytes")
    raw_config["model"]["name"] = family_models[arch]
    lora = {**LORA, "train.epochs": 5}  # the tiny BERT needs 5 epochs of LoRA to learn
    fp32 = _run(raw_config, **lora)
    qlora = _run(raw_config, **lora, **{"quant.bits": 4, "quant.scheme": "nf4",
                                        "quant.group_size": 64, "quant.mode": "qlora"})
    assert fp32.state == qlora.state == "complete", (fp32.error, qlora.error)
    assert qlora.metrics["trainable_params"] == fp32.metrics["trainable_params"]
    assert qlora.metrics["size_mb"] <= 0.16 * fp32.metrics["size_mb"]
    assert qlora.metrics["accuracy"] > 0.5  # 3 balanced classes: it learned through NF4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training(
    precision: str, raw_config: dict[str, Any], family_models: dict[str, str]
) -> None:
    raw_config["model"]["name"] = family_models["bert"]
    result = _run(raw_config, **{"train.precision": precision})
    assert result.state == "complete", result.error
    assert result.metrics["accuracy"] > 0.5


@pytest.mark.parametrize("params", [
    {"prune.ratio": 0.5, "prune.scheme": "heads"},
    {"prune.ratio": 0.5, "prune.scheme": "ffn"},
    {"prune.ratio": 0.5, "prune.scheme": "unstructured", "prune.scope": "global"},
    {"arch.n_layers": 1, "arch.layer_selection": "first"},
    {"quant.bits": 4, "quant.scheme": "group", "quant.group_size": 32},
    {"distill.enabled": True, "distill.temperature": 2.0, "distill.alpha": 0.5},
    {"peft.method": "dora", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
     "lora.targets": "qv"},
    {"peft.method": "adalora", "adalora.init_r": 8, "adalora.target_r": 4,
     "adalora.alpha": 8, "adalora.targets": "qv"},
    {"peft.method": "prefix", "prompt.virtual_tokens": 4},
], ids=["heads", "ffn", "unstructured", "arch", "int4", "distill", "dora", "adalora", "prefix"])
def test_every_family_on_cuda(
    params: dict[str, Any], raw_config: dict[str, Any], family_models: dict[str, str]
) -> None:
    raw_config["model"]["name"] = family_models["llama"]
    result = _run(raw_config, **params)
    assert result.state == "complete", result.error


def test_dynamic_int8_on_cuda_fails_fast_with_the_reason(
    raw_config: dict[str, Any], family_models: dict[str, str]
) -> None:
    raw_config["model"]["name"] = family_models["bert"]
    result = _run(raw_config, **{"quant.bits": 8, "quant.scheme": "dynamic"})
    assert result.state == "fail"
    assert "quant.scheme dynamic runs PyTorch's int8 CPU kernels" in (result.error or "")
