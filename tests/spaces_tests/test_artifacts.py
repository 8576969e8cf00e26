"""Every kind of artifact paretune writes, read back the way a user without paretune would:
each saved format's own load code, plain ``from_pretrained`` and ``pipeline``, in a fresh
process where ``import paretune`` fails. Accuracy must match what the trial recorded, or the
loader must raise: never a model with random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from paretune import reference
from paretune.search import parse_config
from paretune.spaces._layout import prefix_tuning_runs
from paretune.trial import TrialResult, TrialSpec, run_trial

# Every trial starts from the study's reference (trained once) and compresses it as it is,
# so that the accuracies compared are those of a model that learned the task.
FROM_REFERENCE = {"train.init": "finetuned", "train.epochs": 0, "peft.method": "none",
                  "train.batch_size": 16}
QUANTIZED = ["fp16", "bf16", "int8", "int4-g32", "int4-g64", "int4-g128"]
KINDS: dict[str, dict[str, Any]] = {
    "fp32": {},
    **{fmt: {"quant.format": fmt} for fmt in QUANTIZED},
    "pruned-bert": {"prune.ratio": 0.5, "prune.scheme": "heads"},
    "prompt-adapter": {"peft.method": "prefix", "prompt.virtual_tokens": 4},
    "vocab": {"vocab.keep": "task"},  # plain safetensors with a trimmed tokenizer
}
# no prompt adapter where peft cannot prefix-tune (transformers 5.25 renamed
# past_key_values to cache)
ADAPTERS = ["prompt-adapter"] if prefix_tuning_runs("bert") else []
if not ADAPTERS:
    del KINDS["prompt-adapter"]
NO_PARETUNE = "import sys\nsys.modules['paretune'] = None\n"


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, family_models: dict[str, str], tiny_csv: str
) -> dict[str, tuple[Path, TrialResult]]:
    """kind -> (artifact directory, the trial that wrote and measured it)."""
    tmp = tmp_path_factory.mktemp("artifacts")
    raw = {
        "study": {"cache_dir": str(tmp / "cache")},
        "model": {"name": family_models["bert"], "max_length": 32},
        "task": {"dataset": tiny_csv, "eval_split": 0.25},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }
    context = parse_config(raw).context()
    out = {}
    with pytest.MonkeyPatch.context() as patch:  # the tiny random-init BERT learns at 3e-3
        recipe = reference.recipe_for
        patch.setattr(reference, "recipe_for", lambda rows, hidden: {
            **recipe(rows, hidden), "lr": 3e-3, "epochs": 3, "batch_size": 16})
        for kind, params in KINDS.items():
            result = run_trial(TrialSpec(0, {**FROM_REFERENCE, **params}, context),
                               artifact_dir=str(tmp / kind))
            assert result.state == "complete", (kind, result.error)
            out[kind] = (tmp / kind, result)
    return out


@pytest.fixture(scope="module")
def eval_rows(tiny_csv: str) -> dict[str, Any]:
    from paretune import data

    dataset = data.load_task_data({"dataset": tiny_csv, "eval_split": 0.25, "type":
                                   "classification", "text_column": "text",
                                   "label_column": "label"}, 0)
    return {"texts": dataset.eval_texts, "labels": list(dataset.eval_labels)}


def _without_paretune(code: str, tmp: Path, rows: dict[str, Any]) -> Any:
    """Run ``code`` in a fresh Python in which ``import paretune`` fails; it reads the eval
    rows from ``ROWS`` and prints ``RESULT`` and a JSON value, returned here."""
    (tmp / "rows.json").write_text(json.dumps(rows))
    script = NO_PARETUNE + f"ROWS = {str(tmp / 'rows.json')!r}\n" + code
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (transformers' trust_remote_code prompt may precede it on the same line)
    return json.loads(proc.stdout.rpartition("RESULT ")[2])


def test_every_quantized_format_loads_without_paretune_at_its_accuracy(
    artifacts: dict[str, tuple[Path, TrialResult]], eval_rows: dict[str, Any], tmp_path: Path
) -> None:
    """Each format's own load code (the model card's), as written, in a process without
    paretune: the recorded accuracy within 0.01, in the runtime the format names."""
    from paretune.search._materialize import load_snippet

    code = ["import json", "rows = json.load(open(ROWS))", "out = {}"]
    for kind in ["fp32", *QUANTIZED, "pruned-bert", *ADAPTERS]:
        directory, _ = artifacts[kind]
        snippet = load_snippet(directory, "classification", 32)
        code += [
            f"ns = {{}}\nexec({snippet!r}, ns)",
            "preds = ns['logits'](rows['texts']).argmax(-1).tolist()",
            f"out[{kind!r}] = sum(p == y for p, y in zip(preds, rows['labels'])) / len(preds)",
        ]
    code += ["try:\n    import paretune\n    out['import paretune'] = 'ok'\n"
             "except ImportError:\n    out['import paretune'] = 'fails'",
             "print('RESULT', json.dumps(out))"]
    got = _without_paretune("\n".join(code), tmp_path, eval_rows)
    assert got.pop("import paretune") == "fails"
    for kind, accuracy in got.items():
        recorded = artifacts[kind][1].metrics["accuracy"]
        assert abs(accuracy - recorded) <= 0.01, (kind, accuracy, recorded)
    assert max(got.values()) > 0.5  # 3 balanced classes: the reference learned the task


RUNTIMES = {  # kind -> the saved format and the runtime its latency was measured in
    "fp32": ("transformers", "torch"), "fp16": ("transformers", "torch"),
    "bf16": ("transformers", "torch"), "int8": ("onnx", "onnxruntime"),
    "int4-g32": ("onnx", "onnxruntime"), "pruned-bert": ("pruned-bert", "torch"),
    "prompt-adapter": ("adapter", "peft"),
}


def test_each_kind_is_measured_in_the_runtime_that_ships_it(
    artifacts: dict[str, tuple[Path, TrialResult]],
) -> None:
    import onnx

    for kind, (fmt, runtime) in RUNTIMES.items():
        if kind not in KINDS:
            continue
        directory, result = artifacts[kind]
        assert result.notes["saved_format"] == fmt, kind
        assert runtime in result.notes["latency_runtime"], kind
        assert result.notes["latency_device"].startswith("cpu: ")
        assert result.metrics["latency_ms"] > 0 and result.metrics["latency_ms_iqr"] >= 0
    # the low-bit formats run their low-bit kernels: integer matmuls, 4-bit matmuls and
    # 4-bit embedding lookups in the graph ONNX Runtime executes
    ops = {kind: {n.op_type for n in onnx.load(str(artifacts[kind][0] / "model.onnx")).graph.node}
           for kind in ("int8", "int4-g32")}
    assert "MatMulInteger" in ops["int8"]
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops["int4-g32"]


def test_plain_from_pretrained_and_pipeline_reproduce_or_raise(
    artifacts: dict[str, tuple[Path, TrialResult]], eval_rows: dict[str, Any], tmp_path: Path
) -> None:
    """What a new user tries first, on every kind paretune writes: the recorded accuracy,
    or an exception. Plain transformers artifacts must load; the others must raise."""
    dirs = {kind: str(directory) for kind, (directory, _) in artifacts.items()}
    code = f'''
import json
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
rows = json.load(open(ROWS))
out = {{}}
for kind, path in {dirs!r}.items():
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        enc = tokenizer(rows["texts"], padding=True, truncation=True, max_length=32,
                        return_tensors="pt")
        with torch.inference_mode():
            preds = model(**enc).logits.argmax(-1).tolist()
        out[kind + " from_pretrained"] = sum(
            p == y for p, y in zip(preds, rows["labels"])) / len(preds)
    except Exception as exc:
        out[kind + " from_pretrained"] = "raised " + type(exc).__name__
    try:
        classify = pipeline("text-classification", model=path, truncation=True, max_length=32)
        ids = classify.model.config.label2id
        preds = [ids[r["label"]] for r in classify(rows["texts"])]
        out[kind + " pipeline"] = sum(p == y for p, y in zip(preds, rows["labels"])) / len(preds)
    except Exception as exc:
        out[kind + " pipeline"] = "raised " + type(exc).__name__
print("RESULT", json.dumps(out))
'''
    got = _without_paretune(code, tmp_path, eval_rows)
    for key, value in got.items():
        kind = key.split()[0]
        recorded = artifacts[kind][1].metrics["accuracy"]
        assert isinstance(value, str) or abs(value - recorded) <= 0.01, (key, value, recorded)
    for kind in ("fp32", "fp16", "bf16", "vocab"):  # plain safetensors: transformers reads them
        assert not isinstance(got[f"{kind} from_pretrained"], str), got
        assert not isinstance(got[f"{kind} pipeline"], str), got
    for kind in ("int8", "int4-g32", "pruned-bert", *ADAPTERS):  # not its format
        assert isinstance(got[f"{kind} from_pretrained"], str), got


def test_size_estimate_is_a_lower_bound_of_every_format(
    artifacts: dict[str, tuple[Path, TrialResult]], family_models: dict[str, str]
) -> None:
    from transformers import AutoModelForSequenceClassification

    from paretune.spaces import quant

    model = AutoModelForSequenceClassification.from_pretrained(
        family_models["bert"], num_labels=3, ignore_mismatched_sizes=True)
    for fmt in ["fp32", *QUANTIZED]:
        estimate = quant.estimated_size_mb(model, quant.QuantConfig(format=fmt))
        size = artifacts[fmt][1].metrics["size_mb"]
        assert estimate <= size <= 3 * estimate, (fmt, estimate, size)


def test_the_bytes_follow_the_bits(artifacts: dict[str, tuple[Path, TrialResult]]) -> None:
    """Embeddings included: int8 and 4-bit artifacts shrink towards a quarter and an eighth
    of fp32. On this tiny model the graph itself (about 0.1 MB), ONNX Runtime's fp32 scales
    (one per block) and the pooler (a Gemm, which MatMulNBits leaves in fp32) weigh more
    than on MiniLM (bench/RESULTS.md)."""
    size = {kind: result.metrics["size_mb"] for kind, (_, result) in artifacts.items()}
    assert 0.45 <= size["fp16"] / size["fp32"] <= 0.55
    assert 0.45 <= size["bf16"] / size["fp32"] <= 0.55
    assert 0.2 <= size["int8"] / size["fp32"] <= 0.36
    for fmt in ("int4-g32", "int4-g64", "int4-g128"):
        assert 0.1 <= size[fmt] / size["fp32"] <= 0.26, (fmt, size)
    assert size["int4-g128"] < size["int4-g64"] < size["int4-g32"]  # fewer scales


def test_torchao_format_round_trips_through_from_pretrained(
    family_models: dict[str, str], tmp_path: Path
) -> None:
    """The GPU's int8 format, written and read back on the CPU (torchao's weight-only int8
    runs there too, without a speed-up): transformers' own loader returns the same model."""
    pytest.importorskip("torchao")
    import torch
    from transformers import AutoModelForSequenceClassification

    from paretune.spaces import _artifact

    model = AutoModelForSequenceClassification.from_pretrained(family_models["bert"]).eval()
    ids = torch.randint(5, 50, (3, 7))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    fmt = _artifact.get_format("torchao")
    _artifact.write(model, tmp_path / "ao", fmt, _artifact.SaveRequest(
        options={"weights": "int8", "block": 0}, device="cpu"))
    assert _artifact.detect(tmp_path / "ao") is fmt
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ao").eval()
    with torch.no_grad():
        after = again(input_ids=ids).logits.float()
    assert type(again.bert.encoder.layer[0].attention.self.query.weight).__name__ == "Int8Tensor"
    assert torch.allclose(after, before, atol=0.02)


def test_the_card_of_a_model_with_its_own_code_trusts_it_for_the_tokenizer_too(
    tmp_path: Path,
) -> None:
    # without it, AutoTokenizer asks "Do you wish to run the custom code? [y/N]" in a
    # terminal and waits before going on
    import json

    from paretune.spaces import _formats

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["PrunedBertForSequenceClassification"], "model_type": "pruned-bert",
        "auto_map": {"AutoModelForSequenceClassification": "modeling.PrunedBert"}}))
    code = _formats._transformers_snippet(tmp_path, "classification", 32)
    assert "AutoTokenizer.from_pretrained(path, trust_remote_code=True)" in code
    assert ".from_pretrained(path, trust_remote_code=True).eval()" in code
