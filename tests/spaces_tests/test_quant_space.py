"""Which formats a study offers, by where it measures: every offered format has a runtime
with its kernels there; slow half precision is left out when latency is an objective."""

from __future__ import annotations

import pytest

from paretune.errors import ConfigError
from paretune.spaces import SpaceInfo, quant


def info(device: str, objectives: tuple[str, ...] = ("accuracy", "size_mb")) -> SpaceInfo:
    return SpaceInfo("bert", 2, 4, 4, 32, 64, 100, device=device, measure_device=device,
                     objectives=objectives)


def test_cpu_offers_onnx_runtime_formats_and_no_nf4() -> None:
    offered = quant.offered(info("cpu"))
    assert offered[:3] == ["fp32", "fp16", "bf16"]
    assert {"int8", "int4-g32", "int4-g64", "int4-g128"} <= set(offered)
    assert "nf4-g64" not in offered
    for fmt in ("int8", "int4-g32"):
        assert quant.saved_format(fmt, "cpu")[0] == "onnx"  # type: ignore[index]


def test_with_latency_an_objective_slow_half_precision_is_not_offered_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    latency = ("accuracy", "latency_ms")
    monkeypatch.setattr(quant, "cpu_has_bf16", lambda: False)
    assert not {"fp16", "bf16"} & set(quant.offered(info("cpu", latency)))
    monkeypatch.setattr(quant, "cpu_has_bf16", lambda: True)
    offered = quant.offered(info("cpu", latency))
    assert "bf16" in offered and "fp16" not in offered


def test_cuda_formats_follow_the_installed_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quant, "_installed", lambda module: module != "bitsandbytes")
    offered = quant.offered(info("cuda", ("accuracy", "latency_ms")))
    assert {"fp16", "bf16", "int8", "int4-g64"} <= set(offered) and "nf4-g64" not in offered
    assert quant.saved_format("int4-g64", "cuda") == ("torchao", {"weights": "int4",
                                                                  "block": 64})
    with pytest.raises(ConfigError, match="not installed: pip install -U bitsandbytes"):
        quant.check(quant.QuantConfig(format="nf4-g64"), info("cuda"))
    with pytest.raises(ConfigError, match="use int4-g64 there"):
        quant.check(quant.QuantConfig(format="nf4-g64"), info("cpu"))


def test_a_torchao_too_old_to_save_int8_counts_as_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchao before 0.16 quantizes int8 into a tensor type with no safetensors form: every
    such trial would fail at save time, so its formats are not offered on a GPU."""
    found = {"torchao": "0.15.0"}
    monkeypatch.setattr(quant.importlib.util, "find_spec",
                        lambda name: object() if name in found else None)
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: found[name])
    offered = quant.offered(info("cuda"))
    assert not {"int8", "int4-g32"} & set(offered) and "fp16" in offered
    with pytest.raises(ConfigError, match=r"ships for torchao >= 0\.16, which is not installed"):
        quant.check(quant.QuantConfig(format="int8"), info("cuda"))
    found["torchao"] = "0.16.0+cu126"
    assert {"int8", "int4-g32"} <= set(quant.offered(info("cuda")))
    quant.check(quant.QuantConfig(format="int8"), info("cuda"))  # no error


def test_a_model_of_shared_layers_gets_no_onnx_int8_or_int4() -> None:
    # ONNX Runtime quantized ALBERT's shared weights at their first use only and kept an
    # fp32 copy for the other layers: int8 1.37 MB, int4-g32 1.23 MB, fp32 1.07 MB
    albert = SpaceInfo("albert", 2, 4, 4, 32, 64, 100, device="cpu", measure_device="cpu",
                       objectives=("accuracy", "size_mb"))
    assert quant.offered(albert) == ["fp32", "fp16", "bf16"]
    with pytest.raises(ConfigError, match="shares one set of weights between its layers"):
        quant.check(quant.QuantConfig(format="int8"), albert)
    gpu = SpaceInfo("albert", 2, 4, 4, 32, 64, 100, device="cuda", measure_device="cuda",
                    objectives=("accuracy", "size_mb"))
    assert not quant._shared_onnx("int8", gpu)  # torchao quantizes each use on a GPU
