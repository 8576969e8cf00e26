"""Mistakes a run would otherwise find late (every trial failing, a hang, a traceback) are
one line on stderr, exit code 2, before anything is written to the storage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from paretune.cli import main

NO_GPU = "no CUDA device visible"


def _has_gpu() -> bool:
    from paretune.launchers.multiprocess import visible_gpus

    return bool(visible_gpus())


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nobody listens


def _file_in_the_way(raw: dict[str, Any]) -> None:
    blocker = Path(raw["study"]["cache_dir"]).parent / "blocker"
    blocker.write_text("a file, not a directory")
    raw["study"]["cache_dir"] = str(blocker / "cache")


def _model_without_tokenizer(raw: dict[str, Any]) -> None:
    """The model's files alone, as ``model.save_pretrained`` writes them (was: a study on an
    empty 5-token tokenizer that reads every word as [UNK])."""
    import shutil

    source = Path(raw["model"]["name"])
    target = Path(raw["study"]["cache_dir"]).parent / "model-only"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, target / name)
    raw["model"]["name"] = str(target)


def _model_copy(raw: dict[str, Any], keep: tuple[str, ...], extra: dict[str, str]) -> Path:
    """A directory with some of the tiny model's files, and ``extra`` files."""
    import shutil

    source = Path(raw["model"]["name"])
    target = Path(raw["study"]["cache_dir"]).parent / "mine"
    target.mkdir()
    for path in source.iterdir():
        if path.name not in ("config.json", "model.safetensors") or path.name in keep:
            shutil.copy(path, target / path.name)
    for name, text in extra.items():
        (target / name).write_text(text)
    raw["model"]["name"] = str(target)
    return target


def _config_of(raw: dict[str, Any], **changes: Any) -> None:
    import json

    target = _model_copy(raw, ("config.json", "model.safetensors"), {})
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))


LATE_CHECKS: list[tuple[str, Callable[[dict[str, Any]], Any], list[str]]] = [
    ("model directory without weights", lambda r: _model_copy(r, ("config.json",), {}),
     ["mine", "holds a config.json but no weights", "save_pretrained"]),
    ("model directory of an ONNX artifact", lambda r: _model_copy(
        r, ("config.json",), {"model.onnx": "not really"}),
     ["holds an ONNX model, which cannot be trained"]),
    ("peft adapter as the model", lambda r: _model_copy(
        r, (), {"adapter_config.json": '{"base_model_name_or_path": "org/base"}'}),
     ["holds a peft adapter, not a model", "give its base model ('org/base')"]),
    ("model's weights file", lambda r: r["model"].update(
        name=str(Path(r["model"]["name"]) / "model.safetensors")),
     ["model.safetensors' is a file", "give the directory that holds the model"]),
    ("causal LM on an encoder", lambda r: r.update(
        task={**r["task"], "type": "causal_lm", "text_column": "text"},
        study={**r["study"], "objectives": {"perplexity": "minimize"}}),
     ["is a bert model, an encoder", "task.type causal_lm needs a decoder"]),
    ("causal LM from a classifier's checkpoint", lambda r: (_config_of(
        r, model_type="llama", architectures=["LlamaForSequenceClassification"],
        tie_word_embeddings=False, is_decoder=None), r.update(
        task={**r["task"], "type": "causal_lm", "text_column": "text"},
        study={**r["study"], "objectives": {"perplexity": "minimize"}})),
     ["is a sequence classifier (LlamaForSequenceClassification)", "holds no LM head"]),
    ("RoBERTa's positions start after its padding id", lambda r: _config_of(
        r, model_type="roberta", architectures=["RobertaForSequenceClassification"],
        max_position_embeddings=33, pad_token_id=1), ["`model.max_length <= 31` must hold"]),
    ("max_length zero", lambda r: r["model"].update(max_length=0),
     ["model.max_length must be a positive integer", "0"]),
    ("max_length over the model's positions", lambda r: r["model"].update(max_length=4096),
     ["`model.max_length <= 512` must hold", "4096"]),
    ("model directory without its tokenizer", _model_without_tokenizer,
     ["model-only", "holds a model but no tokenizer files", "tokenizer.save_pretrained"]),
    ("measure repeats", lambda r: r["measure"].update(latency_repeats=0),
     ["measure.latency_repeats must be a positive integer", "0"]),
    ("measure batch size", lambda r: r["measure"].update(latency_batch_size="big"),
     ["measure.latency_batch_size", "'big'"]),
    ("cache_dir under a file", _file_in_the_way, ["study.cache_dir", "is a file"]),
    ("hub id nobody has", lambda r: r["model"].update(name="made-up-org/no-such-model-x7"),
     ["model.name 'made-up-org/no-such-model-x7'", "Hugging Face"]),
    ("ray address nobody answers", lambda r: r.update(
        launcher={"type": "ray", "address": f"127.0.0.1:{_closed_port()}"}),
     ["launcher.address", "no Ray cluster answers there"]),
    ("ray address that swallows packets", lambda r: r.update(
        launcher={"type": "ray", "address": "ray://192.0.2.1:10001"}),  # TEST-NET-1
     ["launcher.address 'ray://192.0.2.1:10001'", "no Ray cluster answers there"]),
    ("heartbeat longer than the grace period", lambda r: r["study"].update(
        heartbeat_interval=30, grace_period=20),
     ["study.grace_period > study.heartbeat_interval", "grace_period=20"]),
    ("bad storage URL", lambda r: r["study"].update(storage="foo://bar"),
     ["unknown database kind 'foo'"]),
    ("storage password never shown", lambda r: r["study"].update(
        storage=f"postgresql://u:SECRET@127.0.0.1:{_closed_port()}/db"),
     ["postgresql://u:***@127.0.0.1", "check the host"]),
]
GPU_CHECKS: list[tuple[str, Callable[[dict[str, Any]], Any], list[str]]] = [
    ("cuda on a machine without GPU", lambda r: r.update(launcher={"device": "cuda"}),
     ["launcher.device 'cuda' asks for a GPU", NO_GPU]),
    ("ray gpus_per_trial without GPU", lambda r: r.update(
        launcher={"type": "ray", "gpus_per_trial": 1}),
     ["launcher.gpus_per_trial 1 asks for a GPU", NO_GPU]),
]


def _run(raw: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paretune: error: "), err
    return err


@pytest.mark.parametrize("what,edit,words", LATE_CHECKS + GPU_CHECKS,
                         ids=[c[0] for c in LATE_CHECKS + GPU_CHECKS])
def test_late_checks_are_one_line_before_the_study_is_written(
    what: str, edit: Callable[[dict[str, Any]], Any], words: list[str],
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    if (what, edit, words) in GPU_CHECKS and _has_gpu():
        pytest.skip("this machine has a GPU")
    storage = raw_config["study"]["storage"]
    edit(raw_config)
    err = _run(raw_config, tmp_path, capsys)
    for word in words:
        assert word in err
    assert "SECRET" not in err
    assert not Path(storage.removeprefix("sqlite:///")).exists()  # nothing written


@pytest.mark.parametrize("content", ["", "# only a comment\n", None])
def test_an_empty_config_file_is_an_error_not_the_default_study(
    content: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = "/dev/null" if content is None else str(tmp_path / "empty.yaml")
    if content is not None:
        Path(path).write_text(content)
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert err == f"paretune: error: config file {path!r} is empty; write at least a study " \
        "section (see examples/), or run `paretune demo` for the built-in study.\n"
    assert list(tmp_path.glob("*.db")) == []


def test_resume_with_a_changed_choice_list_is_one_line_and_leaves_no_trial_running(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from paretune.search import parse_config, run_study
    from paretune.trial import TrialResult

    def quick(spec: Any) -> TrialResult:
        return TrialResult(spec.number, "complete", {"accuracy": 0.5, "size_mb": 1.0})

    raw_config["space"]["quant.format"] = ["fp32", "int8", "int4-g64"]
    run_study(parse_config(raw_config), trial_fn=quick, log=lambda line: None)
    raw_config["space"]["quant.format"] = ["int8", "int4-g64"]
    capsys.readouterr()
    err = _run(raw_config, tmp_path, capsys)
    assert "space.quant.format choices ['fp32', 'int8', 'int4-g64'], not ['int8', 'int4-g64']" \
        in err
    assert "use a new study.name" in err
    study = optuna.load_study(study_name="t", storage=raw_config["study"]["storage"])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_a_run_whose_every_trial_failed_exits_1(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paretune import search
    from paretune.trial import TrialResult

    real = search.run_study

    def broken(spec: Any) -> TrialResult:
        return TrialResult(spec.number, "fail", error="CUDA out of memory")

    monkeypatch.setattr(search, "run_study", lambda cfg, **kw: real(cfg, trial_fn=broken, **kw))
    raw_config["study"]["n_trials"] = 3
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    assert main(["run", str(path), "-q"]) == 1
    err = capsys.readouterr().err
    assert err == ("paretune: error: study 't' has no completed trial; 3 of 3 failed with: "
                   "CUDA out of memory\n")


def test_trial_after_trial_failing_stops_the_run(raw_config: dict[str, Any]) -> None:
    """Failures of the trial's own count toward n_trials; lost ones are replaced, but a run
    does not replace them forever."""
    from paretune.search import parse_config, run_study
    from paretune.search._engine import TrialsFailing
    from paretune.trial import TrialResult

    def lost(spec: Any) -> TrialResult:
        return TrialResult(spec.number, "fail", error="worker lost: the process died (test)")

    raw_config["study"]["n_trials"] = 3
    with pytest.raises(TrialsFailing, match="the last 10 trials all failed"):
        run_study(parse_config(raw_config), trial_fn=lost, log=lambda line: None)
    study = optuna.load_study(study_name="t", storage=raw_config["study"]["storage"])
    assert len(study.trials) == 10


@pytest.mark.parametrize("params,words", [
    ({"lora.rank": 8}, ["recipe: unknown knob 'lora.rank'", "lora.r"]),
    ({"lora.dropout": 1.5}, ["recipe: params.lora.dropout", "1.5"]),
    ("lr=0.1", ["recipe 'params' must map knob names to values"]),
])
def test_a_hand_edited_recipe_is_checked_before_any_model_loads(
    params: Any, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # the model does not exist: an error about the knobs means they were checked first
    recipe = {"paretune_recipe": 1, "study": "t", "trial": 0, "model": "/nowhere",
              "task": {"type": "classification", "dataset": "x.csv"}, "seed": 0,
              "params": params}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paretune: error: "), err
    for word in words:
        assert word in err
