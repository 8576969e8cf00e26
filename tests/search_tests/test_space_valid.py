"""The default space is valid by construction: built for the model and the device, no point
it holds fails for a reason known before training, on any architecture paretune knows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import optuna
import pytest

from paretune.errors import ConfigError
from paretune.search import parse_config
from paretune.search._space import suggest
from paretune.spaces import SpaceInfo
from paretune.spaces._layout import prefix_tuning_runs
from paretune.trial import TrialSpec, build, write_artifact

SAMPLERS = {  # every way the engine draws: random, TPE's model, NSGA-II's crossover
    "random": (lambda: optuna.samplers.RandomSampler(seed=1), 200),
    "tpe": (lambda: optuna.samplers.TPESampler(seed=1, multivariate=True, group=True,
                                               n_startup_trials=10), 150),
    "nsga2": (lambda: optuna.samplers.NSGAIISampler(seed=1, population_size=20), 150),
}
FLOATS = ("train.lr", "lora.dropout", "distill.temperature", "distill.alpha")


def default_space_config(tmp: Path, model: str, data: str, **study: Any) -> dict[str, Any]:
    """No `space` section: every knob over its default range for this model."""
    return {
        "study": {"name": "v", "storage": f"sqlite:///{tmp / 'v.db'}", "seed": 0,
                  "cache_dir": str(tmp / "cache"), **study},
        "model": {"name": model, "max_length": 24},
        "task": {"dataset": data, "eval_split": 0.25},
        "measure": {"latency_repeats": 1, "latency_warmup": 0},
    }


def draw(space: dict[str, Any], n_each: int | None = None,
         info: SpaceInfo | None = None) -> list[dict[str, Any]]:
    """Points from each sampler's way of drawing (told random values, so that the
    model-based samplers draw from their models, not at random), on the model of ``info``
    as the engine draws them."""
    rng = random.Random(0)
    points = []
    for make, n in SAMPLERS.values():
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make())
        for _ in range(n_each or n):
            trial = study.ask()
            points.append(suggest(trial, space, info))
            study.tell(trial, [rng.random(), rng.random()])
    return points


def structure(params: dict[str, Any]) -> tuple[Any, ...]:
    """What a point changes in the model (continuous training knobs aside)."""
    return tuple(sorted((k, v) for k, v in params.items() if k not in FLOATS))


@pytest.fixture(scope="module", autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def check_points(model: str, data: str, tmp: Path, n_each: int | None = None,
                 builds: int = 40) -> int:
    """Draw from the model's default space; every point passes every family's rules and
    guards, and ``builds`` distinct structures (every method and format among them, the
    rest at random) go through the real pipeline, training aside (load, drop layers, prune,
    adapt, merge, quantize, write the artifact). Returns how many points were drawn."""
    from paretune import spaces

    raw = default_space_config(tmp, model, data,
                               objectives=["accuracy", "size_mb", "trainable_params"])
    cfg = parse_config(raw)
    points = draw(cfg.space, n_each, cfg.info)
    for params in points:
        for family in spaces.families():
            if family.is_active(params) and family.check is not None:
                family.check(family.config(params), cfg.info)
    distinct = {structure(p): p for p in points}
    assert len(distinct) >= len(points) // 10  # the space really varies
    chosen = {}  # one point per method, format and pruning scheme first, then at random
    for key in ("peft.method", "quant.format", "prune.scheme", "train.init", "vocab.keep"):
        for params in distinct.values():
            chosen.setdefault((key, params.get(key)), params)
    rest = list(distinct.values())
    random.Random(0).shuffle(rest)
    picked = list(chosen.values()) + rest[: max(0, builds - len(chosen))]
    for i, params in enumerate(picked):
        spec = TrialSpec(i, params, {**cfg.context(), "progress": False})
        model_obj, ctx = build(spec)
        write_artifact(model_obj, ctx, str(tmp / "artifact"))
    return len(points)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_500_points_of_the_default_space_pass_every_check_before_training(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paretune.spaces import train

    monkeypatch.setattr(train, "fit", lambda *a, **k: (0.0, 0.0))
    assert check_points(family_models[arch], tiny_csv, tmp_path) == 500


def test_the_space_knows_the_model_and_the_device(
    family_models: dict[str, str], tiny_csv: str, tmp_path: Path
) -> None:
    cfg = parse_config(default_space_config(tmp_path, family_models["llama"], tiny_csv))
    space = cfg.space
    layers = space["arch.n_layers"]
    assert (layers.default.low, layers.default.high) == (1, 2)
    assert (layers.cases[0].low, layers.cases[0].high) == (0, 0)  # epochs 0: every layer
    formats = space["quant.format"].choices  # this machine is a CPU: ONNX Runtime serves them
    assert "int8" in formats and "int4-g32" in formats and "nf4-g64" not in formats
    assert space["train.precision"].choices == ("fp32",)
    assert space["vocab.keep"].choices == ("all", "task", "task+2k")  # a WordPiece tokenizer
    # quality against size: adapters that can only cost accuracy there are not offered
    assert set(space["peft.method"].choices) == {"none", "lora", "ia3"}
    costs = parse_config(default_space_config(
        tmp_path, family_models["llama"], tiny_csv,
        objectives=["accuracy", "trainable_params"]))
    methods = set(costs.space["peft.method"].choices)
    assert {"head", "dora", "adalora"} <= methods
    assert {"prefix", "ptuning"} <= methods if prefix_tuning_runs("llama") \
        else not {"prefix", "ptuning"} & methods  # transformers 5.25: no past_key_values


@pytest.mark.parametrize("value,rule", [
    ({"arch.n_layers": 5}, "only 2 layers"),
    ({"quant.mode": "qlora"}, "qlora"),
    ({"train.precision": "fp16"}, "fp16 needs a CUDA GPU"),
])
def test_a_user_fixed_value_that_cannot_run_is_one_line_before_the_study(
    value: dict[str, Any], rule: str, family_models: dict[str, str], tiny_csv: str,
    tmp_path: Path,
) -> None:
    raw = default_space_config(tmp_path, family_models["bert"], tiny_csv)
    raw["space"] = value
    with pytest.raises(ConfigError, match=rule) as err:
        parse_config(raw)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"space.{next(iter(value))}")
    assert not (tmp_path / "v.db").exists()


OTHER_MODELS = {  # model type -> families expected out of the space (none: all apply)
    "roberta": set(), "distilbert": set(), "deberta-v2": set(), "qwen2": set(),
    "gpt2": set(), "albert": {"arch", "prune"},
}


@pytest.mark.parametrize("model_type", list(OTHER_MODELS))
def test_a_study_on_each_common_architecture_runs_with_what_applies_to_it(
    model_type: str, tiny_csv: str, topic_texts: list[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paretune.models import make_tiny
    from paretune.search import run_study
    from paretune.spaces import train

    model = make_tiny(tmp_path / model_type, model_type, topic_texts)
    with monkeypatch.context() as m:  # 60 points of its default space, training aside
        m.setattr(train, "fit", lambda *a, **k: (0.0, 0.0))
        check_points(model, tiny_csv, tmp_path / "points", n_each=20, builds=20)
    raw = default_space_config(tmp_path, model, tiny_csv, n_trials=2, sampler="random",
                               objectives=["accuracy", "trainable_params"])
    raw["study"]["anchors"] = False  # quick: one epoch from the pretrained base (the start
    raw["space"] = {"train.epochs": 1, "train.init": "pretrained"}  # from the reference is
    # built above, training aside); every other knob at its default
    cfg = parse_config(raw)
    left_out = {note.split()[0] for note in cfg.notes if "is left out" in note}
    assert left_out == OTHER_MODELS[model_type]
    methods = set(cfg.space["peft.method"].choices)
    assert ("prefix" in methods) == (model_type in ("roberta", "qwen2", "gpt2")
                                     and prefix_tuning_runs(model_type))
    # the methods the model cannot run are named in one line, with the reason
    said = " ".join(note for note in cfg.notes if note.startswith("peft:"))
    assert ("prefix" not in methods) == (f"prefix and ptuning (model type {model_type!r}"
                                         in said)
    assert ("ia3" not in methods) == ("ia3 (paretune has no layer layout" in said)
    assert said.count("peft:") <= 1
    fixed = parse_config({**raw, "space": {**raw["space"], "peft.method": "lora"}})
    assert not [note for note in fixed.notes if note.startswith("peft:")]  # nothing left out
    if "prune" not in left_out:
        assert ("heads" in cfg.space["prune.scheme"].choices) == (model_type == "qwen2")
    study = run_study(cfg, quiet=True)  # real (tiny) training
    states = [t.state for t in study.trials]
    errors = [t.user_attrs.get("error") for t in study.trials if t.state.name == "FAIL"]
    assert not errors, errors
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2


def test_layers_are_dropped_only_where_the_trial_trains_again(
    family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
) -> None:
    cfg = parse_config(default_space_config(tmp_path, family_models["bert"], tiny_csv))
    points = draw(cfg.space, n_each=60, info=cfg.info)
    untrained = [p for p in points if p.get("train.epochs") == 0]
    trained = [p for p in points if p.get("train.epochs", 0) > 0]
    assert untrained and trained
    assert {p["arch.n_layers"] for p in untrained} == {0}  # 0 keeps all layers
    # and no selection among all of them is drawn: it would change nothing
    assert not [p for p in untrained if "arch.layer_selection" in p]
    assert min(p["arch.n_layers"] for p in trained) < cfg.info.n_layers
    # nor at the model's full depth, where every selection keeps the same layers
    full = [p for p in trained if p["arch.n_layers"] == cfg.info.n_layers]
    assert full and not [p for p in full if "arch.layer_selection" in p]
    assert [p for p in trained if "arch.layer_selection" in p]
    # nothing trains at 0 epochs: no rate or batch size is drawn to tell such points apart
    assert not [p for p in untrained if {"train.lr", "train.batch_size"} & set(p)]
    assert all({"train.lr", "train.batch_size"} <= set(p) for p in trained)
    # nor an adapter: untrained, it would change nothing but the bytes
    assert {p["peft.method"] for p in untrained} == {"none"}
    assert {p["peft.method"] for p in trained} - {"none"}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_only_a_full_fine_tune_from_pretrained_gives_its_new_head_a_faster_rate(
    arch: str, family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
) -> None:
    cfg = parse_config(default_space_config(tmp_path, family_models[arch], tiny_csv))
    points = draw(cfg.space, n_each=60, info=cfg.info)
    fresh = [p for p in points if p.get("train.init") == "pretrained"
             and p.get("peft.method") == "none" and p.get("train.epochs", 0) > 0]
    assert fresh and {p["train.head_lr_scale"] for p in fresh} == {100.0}
    others = [p for p in points if p not in fresh]
    # adapters, the head alone and the finetuned start (its head trained) have one rate
    assert others and not [p for p in others if "train.head_lr_scale" in p]


def test_lora_scales_stay_where_its_rates_were_calibrated(
    family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
) -> None:
    raw = default_space_config(tmp_path, family_models["bert"], tiny_csv,
                               objectives=["accuracy", "trainable_params"])
    cfg = parse_config(raw)
    lora = [p for p in draw(cfg.space, info=cfg.info) if "lora.alpha" in p]
    # alpha / r of 1 or 2: LoRA's rates were measured at 2 and diverged at 4 and 8
    assert {p["lora.alpha"] / p["lora.r"] for p in lora} == {1.0, 2.0}
    assert {p["lora.r"] for p in lora} == {4, 8, 16, 32}


def test_a_causal_lm_has_no_head_to_speed_up(
    family_models: dict[str, str], tiny_csv: str, tmp_path: Path,
) -> None:
    raw = default_space_config(tmp_path, family_models["llama"], tiny_csv)
    raw["task"]["type"] = "causal_lm"
    cfg = parse_config(raw)
    drawn = {p.get("train.head_lr_scale") for p in draw(cfg.space, n_each=40, info=cfg.info)}
    assert drawn <= {None, 1.0} and 1.0 in drawn


def test_a_value_on_a_step_is_recorded_as_written() -> None:
    from paretune.spaces import Float

    space = Float(0.0, 0.9, step=0.1)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {space.suggest(study.ask(), "x") for _ in range(200)}
    # Optuna gives 0.1 x 3 as 0.30000000000000004; recipes and the dashboard show 0.3
    assert drawn == {0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}
