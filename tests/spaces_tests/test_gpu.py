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
    qlora = _run(raw_config, **lora, **{"quant.format": "nf4-g64", "quant.mode": "qlora"})
    assert fp32.state == qlora.state == "complete", (fp32.error, qlora.error)
    assert qlora.metrics["trainable_params"] == fp32.metrics["trainable_params"]
    # shipped through bitsandbytes: NF4 Linears, embeddings and norms in bf16
    assert qlora.metrics["size_mb"] <= 0.3 * fp32.metrics["size_mb"]
    assert qlora.notes["saved_format"] == "bitsandbytes"
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
    {"quant.format": "int4-g32"},
    {"distill.enabled": True, "distill.temperature": 2.0, "distill.alpha": 0.5},
    {"peft.method": "dora", "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
     "lora.targets": "qv"},
    {"peft.method": "adalora", "adalora.ranks": "8/4",
     "adalora.alpha": 8, "adalora.targets": "qv"},
    {"peft.method": "prefix", "prompt.virtual_tokens": 4},
], ids=["heads", "ffn", "unstructured", "arch", "int4", "distill", "dora", "adalora", "prefix"])
def test_every_family_on_cuda(
    params: dict[str, Any], raw_config: dict[str, Any], family_models: dict[str, str]
) -> None:
    if "quant.format" in params:
        pytest.importorskip("torchao")
    raw_config["model"]["name"] = family_models["llama"]
    result = _run(raw_config, **params)
    assert result.state == "complete", result.error


@pytest.mark.parametrize("fmt,library,saved", [
    ("int8", "torchao", "torchao"), ("int4-g64", "torchao", "torchao"),
    ("nf4-g64", "bitsandbytes", "bitsandbytes"),
])
def test_quantized_formats_on_cuda_load_with_from_pretrained(
    fmt: str, library: str, saved: str, raw_config: dict[str, Any],
    family_models: dict[str, str], tmp_path: Any,
) -> None:
    """On a GPU the low-bit formats ship through transformers' own integrations: plain
    from_pretrained reads them back at the accuracy the trial recorded."""
    pytest.importorskip(library)
    from transformers import AutoModelForSequenceClassification

    from paretune import data

    raw_config["model"]["name"] = family_models["bert"]
    raw_config["launcher"] = {"device": "cuda"}
    cfg = parse_config(raw_config)
    out = tmp_path / fmt
    result = run_trial(TrialSpec(0, {**BASE, "quant.format": fmt}, cfg.context()),
                       artifact_dir=str(out))
    assert result.state == "complete", result.error
    assert result.notes["saved_format"] == saved and library in result.notes["latency_runtime"]
    assert result.notes["latency_mode"] == "cuda graph"
    model = AutoModelForSequenceClassification.from_pretrained(out, device_map="cuda").eval()
    rows = data.load_task_data(cfg.context()["task"], 0)
    split = data.tokenize(cfg_tokenizer(out), rows.eval_texts, rows.eval_labels, 32, "gpu", None)
    with torch.inference_mode():
        preds = model(input_ids=split.input_ids.cuda(),
                      attention_mask=split.attention_mask.cuda()).logits.argmax(-1).cpu()
    accuracy = float((preds == split.labels).float().mean())
    assert abs(accuracy - result.metrics["accuracy"]) <= 0.01


def cfg_tokenizer(path: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_cuda_graph_times_the_kernels_and_a_syncing_model_is_timed_eagerly() -> None:
    from paretune.objectives.cost import time_model

    layers = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(50)]).cuda()
    x = torch.randn(16, 256, device="cuda")

    def captured(**batch: Any) -> Any:
        return layers(x)

    def syncing(**batch: Any) -> Any:  # waits on the GPU inside its pass
        for layer in layers:
            float(layer(x).sum())

    graph, mode = time_model(captured, {}, "cuda", warmup=2, repeats=10, exclusive=False)
    assert mode == "cuda graph" and len(graph) == 10
    eager, mode = time_model(captured, {}, "cuda", warmup=2, repeats=10, exclusive=False,
                             cuda_graph=False)
    # 50 launches from Python: the eager pass's time includes them, the graph's does not
    assert mode == "eager" and sorted(graph)[5] < sorted(eager)[5]
    times, mode = time_model(syncing, {}, "cuda", warmup=1, repeats=3, exclusive=False)
    assert mode == "eager" and len(times) == 3
