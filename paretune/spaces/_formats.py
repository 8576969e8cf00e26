"""The built-in saved formats (see ``_artifact``), in detection order.

- ``adapter``: a prompt adapter (prefix / P-tuning) that cannot merge: the adapter at the
  top of the directory (peft's layout), its base in ``base/``. Plain ``from_pretrained(dir)``
  finds the adapter and fails (transformers does not load prompt adapters; the base is not
  where ``base_model_name_or_path`` points from elsewhere); peft loads it.
- ``onnx``: ``model.onnx`` for ONNX Runtime (CPU), fp32 or quantized by ONNX Runtime's own
  tools: int8 weights with int8 activations quantized per batch (``MatMulInteger``,
  embeddings int8), or 4-bit weights per block (``MatMulNBits``, embeddings in
  ``GatherBlockQuantized``). ``config.json`` beside it carries the labels and the
  architecture; there is no weights file transformers could read, so it raises.
- ``torchao`` / ``bitsandbytes``: transformers models quantized through transformers' own
  integrations (``quantization_config`` in ``config.json``), safetensors; they load with
  ``from_pretrained`` where the library is installed and raise an ImportError where not.
- ``pruned-bert``: a head-pruned BERT (model type ``paretune_bert``), its code shipped
  beside the weights: ``from_pretrained(dir, trust_remote_code=True)``; without it
  transformers refuses the unknown model type.
- ``transformers``: plain safetensors in the dtype the format names (fp32, fp16, bf16).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from paretune.spaces._artifact import SavedFormat, SaveRequest, choose, detect, register_format

DTYPES = ("fp32", "fp16", "bf16")
_CLASSIFY = "AutoModelForSequenceClassification"
_CAUSAL = "AutoModelForCausalLM"


def _config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _auto(config: dict[str, Any]) -> str:
    """The Auto class of a saved model: a causal LM where transformers maps its class to
    one (GPT-2's ``GPT2LMHeadModel`` as well as every ``...ForCausalLM``), else a classifier."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = (config.get("architectures") or [""])[0]
    causal = {name for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
              for name in ([names] if isinstance(names, str) else names)}
    return _CAUSAL if arch.endswith("ForCausalLM") or arch in causal else _CLASSIFY


def _quant_method(path: Path) -> str | None:
    return (_config(path).get("quantization_config") or {}).get("quant_method")


def _torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _versions(*names: str) -> str:
    import importlib.metadata

    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def _backbone(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def is_peft(model: Any) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


# --- transformers: plain safetensors, and the head-pruned BERT ----------------------------


def _write_transformers(model: Any, path: Path, request: SaveRequest) -> None:
    model.to(_torch_dtype(request.options.get("dtype", "fp32")))
    model.save_pretrained(path)


def _load_transformers(path: Path, device: str, threads: int | None) -> Any:
    import transformers

    from paretune.spaces import _pruned_bert

    _pruned_bert.register()  # head-pruned BERTs load without running their shipped code
    auto = getattr(transformers, _auto(_config(path)))
    return auto.from_pretrained(str(path), dtype="auto").to(device).eval()


def _torch_snippet(path: Path, max_length: int, load: str, imports: str = "",
                   config: str = "config.json") -> str:
    """Code that defines ``model``, ``tokenizer``, ``config`` and ``logits(texts)``;
    ``load`` builds ``model`` from ``path``."""
    auto = _auto(_config(path / Path(config).parent))
    return f'''import json
import os

import torch
{imports}from transformers import {auto}, AutoTokenizer

path = {str(path.resolve())!r}
{load.replace("AUTO", auto)}
tokenizer = AutoTokenizer.from_pretrained(path{_remote_code(path / Path(config).parent)})
with open(os.path.join(path, {config!r})) as f:
    config = json.load(f)


def logits(texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length={max_length},
                    return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return out.logits.float().cpu().numpy()
'''


def _remote_code(path: Path) -> str:
    return ", trust_remote_code=True" if "auto_map" in _config(path) else ""


def _transformers_snippet(path: Path, task_type: str, max_length: int) -> str:
    load = "model = AUTO.from_pretrained(path" + _remote_code(path) + ").eval()"
    return _torch_snippet(path, max_length, load)


def _torch_runtime() -> str:
    return _versions("torch", "transformers")


def _write_adapter(model: Any, path: Path, request: SaveRequest) -> None:
    """The base in the format the trial asked for (under ``base/``), the adapter on top."""
    from safetensors.torch import load_file, save_file

    base = model.get_base_model()
    choose(base, request.format).write(base, path / "base", request)
    # the embeddings ship in the base; peft would copy a resized (trimmed) table in here too
    model.save_pretrained(str(path), save_embedding_layers=False)
    (path / "README.md").unlink(missing_ok=True)  # peft's own card; paretune writes one
    # the trained head was put back into the base (which saves with plain keys); peft's
    # loader still expects it in the adapter, under the keys peft itself would write
    weights = path / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    for head in ("classifier", "score"):
        module = getattr(base, head, None)
        if module is not None and f"base_model.{head}.weight" not in tensors:
            for name, p in module.named_parameters():
                tensors[f"base_model.{head}.{name}"] = p.detach().cpu().contiguous()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    config = json.loads((path / "adapter_config.json").read_text())
    # peft records the model the base was first loaded from: that is not this base (it
    # was trained, and maybe pruned or cut); point at the one shipped here instead
    config["base_model_name_or_path"] = "./base"
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _load_adapter(path: Path, device: str, threads: int | None) -> Any:
    from peft import PeftModel

    base = detect(path / "base").load(path / "base", device, threads)
    return PeftModel.from_pretrained(base, str(path)).eval()


def _adapter_snippet(path: Path, max_length: int) -> str:
    load = ("base = AUTO.from_pretrained(os.path.join(path, \"base\")"
            + _remote_code(path / "base") + ")\n"
            "model = PeftModel.from_pretrained(base, path).eval()")
    return _torch_snippet(path, max_length, load, "from peft import PeftModel\n",
                          config="base/config.json")


# --- ONNX Runtime ----------------------------------------------------------------------


def _logits_module(model: Any) -> Any:
    """``model`` as ``forward(input_ids, attention_mask) -> logits``: what is exported."""
    import torch

    extra = {"use_cache": False} if _auto(model.config.to_dict()) == _CAUSAL else {}

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              **extra).logits

    return Logits()


def _export(model: Any, example: tuple[Any, Any], file: Path) -> None:
    """TorchScript-based export (seconds for a small encoder); torch.export's where it fails."""
    import warnings

    names: dict[str, Any] = {"input_names": ["input_ids", "attention_mask"],
                             "output_names": ["logits"]}
    with warnings.catch_warnings():
        # the tracer's notes on Python branches (constant here: shapes are dynamic axes) and
        # on opset 21 repeat for every trial; the artifact's accuracy is measured after it
        warnings.simplefilter("ignore")
        _export_quietly(model, example, file, names)


def _export_quietly(model: Any, example: tuple[Any, Any], file: Path,
                    names: dict[str, Any]) -> None:
    import torch

    try:
        axes = {"input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
        torch.onnx.export(model, example, str(file), dynamic_axes=axes, opset_version=21,
                          dynamo=False, **names)
    except Exception:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        torch.onnx.export(model, example, str(file), dynamic_shapes=({0: batch, 1: seq},) * 2,
                          dynamo=True, external_data=False, **names)


def _write_onnx(model: Any, path: Path, request: SaveRequest) -> None:
    import numpy as np
    import onnx
    import torch

    from paretune import devicelock

    model = model.float().cpu().eval()
    ids, mask = request.example["input_ids"][:2], request.example["attention_mask"][:2]
    weights = request.options.get("weights", "fp32")
    # the export and the packing work the CPU for seconds: a latency timed on the CPU by a
    # neighbouring trial meanwhile waits (devicelock)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(False), \
            _quiet_logs(), devicelock.shared("cpu"):
        fp32 = Path(tmp, "model.onnx")
        with torch.no_grad():
            _export(_logits_module(model), (ids.cpu(), mask.cpu()), fp32)
        out = path / "model.onnx"
        if weights == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
        elif weights == "int4":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(fp32)), bits=4, block_size=int(request.options["block"]),
                is_symmetric=True, accuracy_level=4, op_types_to_quantize=("MatMul", "Gather"),
            )
            with np.errstate(invalid="ignore"):  # an all-zero block has scale 0: it stays 0
                quantizer.process()
            quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
        else:
            shutil.copyfile(fp32, out)
    model.config.save_pretrained(str(path))  # labels and architecture; no weights


class _quiet_logs:
    """ONNX Runtime's quantizers log every node at INFO on the root logger."""

    def __enter__(self) -> None:
        logging.disable(logging.WARNING)

    def __exit__(self, *exc: Any) -> None:
        logging.disable(logging.NOTSET)


class OnnxModel:
    """An ONNX Runtime session called like a transformers model: ``.logits`` as a tensor."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoConfig

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = AutoConfig.from_pretrained(str(path))
        self.device = "cpu"

    def __call__(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
        import types

        import numpy as np
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask}
        feed = {k: given[k].cpu().numpy().astype(np.int64) for k in self.inputs}
        out = self.session.run(["logits"], feed)[0]
        return types.SimpleNamespace(logits=torch.from_numpy(out))

    def eval(self) -> OnnxModel:
        return self

    def to(self, device: Any) -> OnnxModel:
        return self


def _onnx_snippet(path: Path, max_length: int) -> str:
    return f'''import json
import os

import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

path = {str(path.resolve())!r}
session = ort.InferenceSession(os.path.join(path, "model.onnx"),
                               providers=["CPUExecutionProvider"])
tokenizer = AutoTokenizer.from_pretrained(path)
with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)


def logits(texts):
    enc = tokenizer(texts, padding=True, truncation=True, max_length={max_length},
                    return_tensors="np")
    feed = {{i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}}
    return session.run(["logits"], feed)[0]
'''


# --- quantized through transformers' integrations (CUDA) --------------------------------


def _write_quantized(model: Any, path: Path, request: SaveRequest, quantization: Any,
                     dtype: Any) -> None:
    """Quantize through transformers' own loader, so that what ``from_pretrained`` reads back
    is exactly what transformers' integration writes."""
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        model.to(dtype).save_pretrained(tmp)
        auto = getattr(transformers, _auto(_config(Path(tmp))))
        quantized = auto.from_pretrained(tmp, dtype=dtype, device_map=request.device,
                                         quantization_config=quantization)
        quantized.save_pretrained(str(path))


def _load_quantized(path: Path, device: str, threads: int | None) -> Any:
    import transformers

    from paretune.spaces import _pruned_bert

    _pruned_bert.register()
    auto = getattr(transformers, _auto(_config(path)))
    return auto.from_pretrained(str(path), device_map=device).eval()


def _quantized_snippet(path: Path, max_length: int, library: str) -> str:
    load = ("model = AUTO.from_pretrained(path, device_map=\"cuda\""
            + _remote_code(path) + ").eval()")
    return _torch_snippet(path, max_length, load, f"import {library}  # noqa: F401\n")


def _write_torchao(model: Any, path: Path, request: SaveRequest) -> None:
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    if request.options["weights"] == "int4":  # tinygemm: bf16 activations, int4 per group
        config = Int4WeightOnlyConfig(group_size=int(request.options["block"]),
                                      int4_packing_format="tile_packed_to_4d")
    else:  # version 2 (Int8Tensor): version 1's AffineQuantizedTensor has no safetensors form
        config = Int8WeightOnlyConfig(version=2)
    _write_quantized(model, path, request, TorchAoConfig(quant_type=config), torch.bfloat16)


def _write_bitsandbytes(model: Any, path: Path, request: SaveRequest) -> None:
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_compute_dtype=torch.bfloat16)
    _write_quantized(model, path, request, config, torch.bfloat16)


# --- the registry, in detection order -------------------------------------------------

register_format(SavedFormat(
    name="adapter",
    doc="a prompt adapter (prefix / P-tuning) at the top, peft's layout; its base in base/",
    library="peft",
    detect=lambda p: (p / "adapter_config.json").is_file() and (p / "base").is_dir(),
    write=_write_adapter,
    load=_load_adapter,
    snippet=lambda path, task_type, n: _adapter_snippet(path, n),
    runtime=lambda: _versions("torch", "transformers", "peft"),
    claims=lambda model, requested: is_peft(model),
))

register_format(SavedFormat(
    name="onnx",
    doc="model.onnx for ONNX Runtime: fp32, int8 (MatMulInteger) or 4-bit (MatMulNBits)",
    library="onnx",
    detect=lambda p: (p / "model.onnx").is_file(),
    write=_write_onnx,
    load=lambda path, device, threads: OnnxModel(path, threads),
    snippet=lambda path, task_type, n: _onnx_snippet(path, n),
    runtime=lambda: _versions("onnxruntime") + " (CPUExecutionProvider)",
))

def _quantized_format(method: str, doc: str, write: Any) -> SavedFormat:
    """A model transformers quantizes through ``method`` (its quantization_config names it)."""
    return SavedFormat(
        name=method, doc=doc, library="transformers",
        detect=lambda p: _quant_method(p) == method,
        write=write,
        load=_load_quantized,
        snippet=lambda path, task_type, n: _quantized_snippet(path, n, method),
        runtime=lambda: _versions(method, "torch", "transformers"),
    )


register_format(_quantized_format(
    "torchao", "transformers + torchao weight-only int8 / int4 per group (tinygemm), safetensors",
    _write_torchao))
register_format(_quantized_format(
    "bitsandbytes", "transformers + bitsandbytes NF4 (blocks of 64), safetensors; CUDA",
    _write_bitsandbytes))

register_format(SavedFormat(
    name="pruned-bert",
    doc="a head-pruned BERT (model type paretune_bert), its code beside the safetensors",
    library="transformers",
    detect=lambda p: _config(p).get("model_type") == "paretune_bert",
    write=_write_transformers,
    load=_load_transformers,
    snippet=_transformers_snippet,
    runtime=_torch_runtime,
    claims=lambda model, requested: requested == "transformers"
    and getattr(_backbone(model).config, "model_type", "") == "paretune_bert",
))

register_format(SavedFormat(
    name="transformers",
    doc="plain safetensors (fp32, fp16 or bf16) for transformers' from_pretrained",
    library="transformers",
    detect=lambda p: (p / "config.json").is_file() and any(p.glob("*.safetensors")),
    write=_write_transformers,
    load=_load_transformers,
    snippet=_transformers_snippet,
    runtime=_torch_runtime,
))
