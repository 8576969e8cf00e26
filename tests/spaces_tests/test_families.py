"""Every family on tiny BERT and Llama models, checked by its measured effect on the model
as it ships: trainable counts, sparsity, reloaded configs, artifact bytes, the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from paretune.search import parse_config
from paretune.trial import TrialSpec, build, run_trial, write_artifact

ARCHS = ("bert", "llama")
BASE = {
    "train.lr": 3e-3, "train.epochs": 1, "train.batch_size": 16, "train.weight_decay": 0.0,
    "peft.method": "none",
}
LORA = {"lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "lora.targets": "qv"}


def _context(model: str, tmp: Path, tiny_csv: str) -> dict[str, Any]:
    raw = {
        "study": {"cache_dir": str(tmp / "cache")},
        "model": {"name": model, "max_length": 32},
        "task": {"dataset": tiny_csv, "eval_split": 0.25},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }
    return parse_config(raw).context()


def shipped(model: str, tmp: Path, tiny_csv: str, **params: Any) -> tuple[Any, Any, Path]:
    """(model as it ships, trial context, artifact directory) of one trial."""
    model_obj, ctx = build(TrialSpec(0, {**BASE, **params}, _context(model, tmp, tiny_csv)))
    out = Path(tmp, f"artifact-{len(list(tmp.glob('artifact-*')))}")
    write_artifact(model_obj, ctx, str(out))
    return model_obj, ctx, out


def nbytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def logits(model: Any, ctx: Any, n: int = 8) -> torch.Tensor:
    data = ctx.eval_data
    with torch.no_grad():
        return model(input_ids=data.input_ids[:n],
                     attention_mask=data.attention_mask[:n]).logits.float()


def reload(directory: Path) -> Any:
    from paretune.models import load_artifact

    return load_artifact(directory)


# --- peft -----------------------------------------------------------------------------

PEFT_CASES = {
    "head": {},
    "lora": LORA,
    "dora": LORA,
    "adalora": {"adalora.ranks": "8/4", "adalora.alpha": 8,
                "adalora.targets": "attention"},
    "ia3": {},
    "prefix": {"prompt.virtual_tokens": 5},
    "ptuning": {"prompt.virtual_tokens": 5},
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(PEFT_CASES))
def test_peft_trains_what_peft_counts_and_ships_loadable(
    arch: str, method: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, needs_prefix_tuning: Any,
) -> None:
    import peft

    if method in ("prefix", "ptuning"):
        needs_prefix_tuning(arch)

    counted: list[int] = []
    real = peft.get_peft_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        model = real(*args, **kwargs)
        counted.append(model.get_nb_trainable_parameters()[0])
        return model

    monkeypatch.setattr(peft, "get_peft_model", spy)
    params = {"peft.method": method, **PEFT_CASES[method]}
    model, ctx, out = shipped(family_models[arch], tmp_path, tiny_csv, **params)
    full = sum(p.numel() for p in model.parameters())
    if method == "head":
        n_labels = model.config.num_labels
        hidden = model.config.hidden_size
        bias = n_labels if arch == "bert" else 0
        assert ctx.stats["trainable_params"] == n_labels * hidden + bias
    else:
        assert counted and ctx.stats["trainable_params"] == counted[0]
        assert ctx.stats["trainable_params"] < full / 5
    shipped_logits = logits(model, ctx)
    assert torch.allclose(logits(reload(out), ctx), shipped_logits, atol=1e-5)
    # a prompt adapter cannot merge: peft's layout on top, its base beside it in base/
    assert (out / "base").is_dir() == (method in ("prefix", "ptuning"))
    assert (out / "adapter_config.json").is_file() == (method in ("prefix", "ptuning"))


# --- prune ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scope,method", [("global", "none"), ("layer", "lora")])
def test_unstructured_sparsity_survives_training_and_merge(
    arch: str, scope: str, method: str, family_models: dict[str, str], tiny_csv: str,
    tmp_path: Path,
) -> None:
    from paretune.spaces.prune import layer_linears, sparsity

    params = {"prune.ratio": 0.6, "prune.scheme": "unstructured", "prune.scope": scope,
              "peft.method": method, **LORA, "lora.targets": "all-linear"}
    _, _, out = shipped(family_models[arch], tmp_path, tiny_csv, **params)
    reloaded = reload(out)
    assert abs(sparsity(reloaded) - 0.6) <= 0.01
    if scope == "layer":
        for m in layer_linears(reloaded):
            assert abs(float((m.weight == 0).float().mean()) - 0.6) <= 0.01


@pytest.mark.parametrize("arch", ARCHS)
def test_head_pruning_removes_heads_and_reloads(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    _, _, dense = shipped(family_models[arch], tmp_path, tiny_csv)
    model, ctx, out = shipped(
        family_models[arch], tmp_path, tiny_csv,
        **{"prune.ratio": 0.5, "prune.scheme": "heads", "peft.method": "lora", **LORA},
    )
    reloaded = reload(out)
    config = reloaded.config
    assert config.num_attention_heads == 2
    if arch == "llama":  # GQA: whole key/value groups go, the group size stays
        assert config.num_key_value_heads == 1
        assert reloaded.model.layers[0].self_attn.k_proj.out_features == 1 * config.head_dim
    else:
        assert reloaded.bert.encoder.layer[0].attention.self.query.out_features == 2 * 32
    assert torch.allclose(logits(reloaded, ctx), logits(model, ctx), atol=1e-5)
    assert nbytes(out) < 0.9 * nbytes(dense)


@pytest.mark.parametrize("arch", ARCHS)
def test_ffn_pruning_removes_neurons_and_reloads(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    _, _, dense = shipped(family_models[arch], tmp_path, tiny_csv)
    model, ctx, out = shipped(
        family_models[arch], tmp_path, tiny_csv, **{"prune.ratio": 0.75, "prune.scheme": "ffn"}
    )
    reloaded = reload(out)
    assert reloaded.config.intermediate_size == 64
    assert torch.allclose(logits(reloaded, ctx), logits(model, ctx), atol=1e-5)
    assert nbytes(out) < 0.8 * nbytes(dense)


# --- arch -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("selection,kept", [("first", 0), ("last", 1), ("spread", 0)])
def test_layer_drop_keeps_the_selected_layers(
    arch: str, selection: str, kept: int, family_models: dict[str, str], tiny_csv: str,
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForSequenceClassification

    from paretune.spaces import _layout

    original = AutoModelForSequenceClassification.from_pretrained(family_models[arch])
    params = {"arch.n_layers": 1, "arch.layer_selection": selection, "peft.method": "head"}
    _, _, out = shipped(family_models[arch], tmp_path, tiny_csv, **params)
    reloaded = reload(out)
    assert reloaded.config.num_hidden_layers == 1
    layers = _layout.layer_list(reloaded)
    assert len(layers) == 1
    # the head alone trained: the kept layer is the pretrained one, unchanged
    a = next(layers[0].parameters())
    b = next(_layout.layer_list(original)[kept].parameters())
    assert torch.equal(a, b)


def test_too_many_layers_fails_the_trial_with_the_fix(
    family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    ctx = _context(family_models["bert"], tmp_path, tiny_csv)
    result = run_trial(TrialSpec(0, {**BASE, "arch.n_layers": 5}, ctx))
    assert result.state == "fail"
    assert "only 2 layers" in (result.error or "")


# --- quant ----------------------------------------------------------------------------

QUANT_CASES = [  # (quant.format served on the CPU, its saved format, max ratio of fp32 bytes)
    ("fp16", "transformers", 0.51),
    ("bf16", "transformers", 0.51),
    ("int8", "onnx", 0.42),  # the graph, norms and rotary tables weigh on a tiny model
    ("int4-g32", "onnx", 0.3),
]


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_artifact_is_smaller_and_runs_as_measured(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    """Every 2-D weight (embeddings included) is stored at the format's bits, and the
    artifact, reloaded by its format's loader, computes what the trial measured."""
    from paretune.models import load_artifact
    from paretune.spaces import _artifact

    _, _, fp32 = shipped(family_models[arch], tmp_path, tiny_csv)
    for fmt, saved, limit in QUANT_CASES:
        _, ctx, out = shipped(family_models[arch], tmp_path, tiny_csv, **{"quant.format": fmt})
        assert _artifact.detect(out).name == saved
        ratio = nbytes(out) / nbytes(fp32)
        assert limit / 3 <= ratio <= limit, (fmt, ratio)
        model = load_artifact(out)
        again = load_artifact(out)
        assert torch.allclose(logits(model, ctx), logits(again, ctx))
        assert torch.allclose(logits(model, ctx), logits(reload(fp32), ctx), atol=0.5)


@pytest.mark.parametrize("params,reason", [
    ({"quant.format": "nf4-g64", "quant.mode": "qlora", "peft.method": "lora", **LORA},
     "runs in bitsandbytes on a CUDA GPU"),
    ({"train.precision": "fp16"}, "train.precision fp16 needs a CUDA GPU"),
])
def test_impossible_combinations_fail_fast_with_the_reason(
    params: dict[str, Any], reason: str, family_models: dict[str, str], tiny_csv: str,
    tmp_path: Path,
) -> None:
    if "CUDA GPU" in reason and torch.cuda.is_available():
        pytest.skip("runs where there is no GPU")
    ctx = _context(family_models["bert"], tmp_path, tiny_csv)
    result = run_trial(TrialSpec(0, {**BASE, **params}, ctx))
    assert result.state == "fail"
    assert reason in (result.error or "")


# --- train ----------------------------------------------------------------------------


def test_schedulers_warm_up_then_decay() -> None:
    from paretune.spaces.train import lr_factor

    assert lr_factor(0, 100, 10, "linear") < lr_factor(9, 100, 10, "linear") <= 1.0
    assert lr_factor(10, 100, 10, "linear") == 1.0
    assert lr_factor(99, 100, 10, "linear") < 0.02
    assert abs(lr_factor(55, 100, 10, "cosine") - 0.5) < 1e-9
    assert lr_factor(99, 100, 10, "constant") == 1.0


@pytest.mark.parametrize("arch", ARCHS)
def test_the_new_head_trains_at_its_own_rate(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    from paretune.spaces import _layout

    def moved(base: str, **params: Any) -> tuple[float, float]:
        """How far the head's and the body's weights moved from their initial values."""
        start, _, _ = shipped(base, tmp_path, tiny_csv, **{"train.lr": 1e-12})
        model, _, _ = shipped(base, tmp_path, tiny_csv, **params)
        head = tuple(_layout.head_modules(model))
        before = dict(start.named_parameters())
        delta = {name: float((p.detach() - before[name].detach()).abs().max()) for name, p
                 in model.named_parameters()}
        return (max(v for k, v in delta.items() if k.startswith(head)),
                max(v for k, v in delta.items() if not k.startswith(head)))

    fast = {"train.lr": 1e-6, "train.head_lr_scale": 1000.0}
    head, body = moved(family_models[arch], **fast)
    assert head > 100 * body > 0
    head, body = moved(family_models[arch], **{"train.lr": 1e-6})  # one rate for all
    assert body > 0 and head < 10 * body
    # a classifier fine-tuned on the task already brings its head: nothing new to speed up
    _, ctx, tuned = shipped(family_models[arch], tmp_path, tiny_csv)
    ctx.tokenizer.save_pretrained(tuned)
    head, body = moved(str(tuned), **fast)
    assert body > 0 and head < 10 * body


def test_bf16_training_runs_on_cpu(
    family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    ctx = _context(family_models["llama"], tmp_path, tiny_csv)
    params = {**BASE, "train.precision": "bf16", "train.scheduler": "cosine",
              "train.warmup_ratio": 0.1}
    result = run_trial(TrialSpec(0, params, ctx))
    assert result.state == "complete", result.error


# --- distill --------------------------------------------------------------------------


def test_kd_loss_on_class_and_token_logits() -> None:
    from paretune.spaces.distill import kd_loss

    teacher = torch.randn(4, 3)
    assert kd_loss(teacher, teacher, 2.0).abs() < 1e-6
    assert kd_loss(torch.zeros(4, 3), teacher, 2.0) > 0
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed = s.clone()
    changed[0, 3:, 0] += 10.0  # masked positions do not count
    assert torch.allclose(kd_loss(s, t, 3.0, mask), kd_loss(changed, t, 3.0, mask))
    assert not torch.allclose(kd_loss(s, t, 3.0), kd_loss(changed, t, 3.0))


@pytest.mark.parametrize("arch", ARCHS)
def test_distillation_moves_the_student_to_the_teacher_trained_once(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.nn.functional as F

    from paretune import reference

    recipe = reference.recipe_for
    monkeypatch.setattr(reference, "recipe_for",
                        lambda rows, hidden: {**recipe(rows, hidden), "lr": 3e-3, "epochs": 3,
                                                  "batch_size": 16})
    trained: list[Path] = []
    real = reference._train
    monkeypatch.setattr(reference, "_train", lambda ctx, n, recipe, path: (
        trained.append(path), real(ctx, n, recipe, path)))
    student = {"train.lr": 3e-3, "train.epochs": 3}
    kd = {"distill.enabled": True, "distill.alpha": 1.0, "distill.temperature": 2.0}
    plain, ctx, _ = shipped(family_models[arch], tmp_path, tiny_csv, **student)  # labels only
    untrained, _, _ = shipped(family_models[arch], tmp_path, tiny_csv,
                              **{**student, "train.lr": 1e-12})
    taught, _, _ = shipped(family_models[arch], tmp_path, tiny_csv, **student, **kd)
    reference._WARM.clear()  # a new process: the teacher comes from the disk cache
    shipped(family_models[arch], tmp_path, tiny_csv, **student, **kd)
    assert len(trained) == 1 and (trained[0] / "config.json").exists()
    teacher = reference.load_reference(ctx, plain.config.num_labels, frozen=True)
    t = F.softmax(logits(teacher, ctx, 40), -1)

    def kl_to_teacher(model: Any) -> float:
        s = F.log_softmax(logits(model, ctx, 40), -1)
        return float(F.kl_div(s, t, reduction="batchmean"))

    # alpha = 1 leaves no label signal: only the teacher can have moved the student to it
    assert kl_to_teacher(taught) < 0.25 * kl_to_teacher(untrained)
    assert kl_to_teacher(plain) < kl_to_teacher(untrained)  # the teacher learned the task
