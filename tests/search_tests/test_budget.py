"""How a study spends its budget: anchors first, the reference trained once, hopeless trials
stopped, and a resumed study never drawing its earlier points again."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import optuna
import pytest

from paretune.search import parse_config, run_study
from paretune.trial import TrialResult, TrialSpec

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def fake(spec: TrialSpec) -> TrialResult:
    rng = random.Random(spec.number)
    return TrialResult(spec.number, "complete", {
        "accuracy": rng.random(), "size_mb": rng.random(), "latency_ms": 1.0,
        "trainable_params": 1.0, "train_time_s": 1.0,
    })


def _quiet(line: str) -> None:
    pass


def test_a_new_study_starts_with_the_anchors(raw_config: dict[str, Any]) -> None:
    raw_config["space"] = {}  # the default space of the tiny 2-layer BERT
    raw_config["study"].update(n_trials=7)
    study = run_study(parse_config(raw_config), trial_fn=fake, log=_quiet)
    params = [t.user_attrs["params"] for t in sorted(study.trials, key=lambda t: t.number)]
    as_is = {"train.init": "finetuned", "train.epochs": 0, "peft.method": "none",
             "arch.n_layers": 0, "prune.ratio": 0.0}  # 0 keeps all layers
    kept = [(p["quant.format"], p["vocab.keep"]) for p in params[:4]]
    assert kept == [("fp32", "all"), ("int8", "all"), ("int4-g32", "task"),
                    ("int4-g128", "task")]
    assert all({k: p[k] for k in as_is} == as_is for p in params[:4])
    assert params[4]["arch.n_layers"] == 1 and params[4]["distill.enabled"] is True
    assert params[4]["train.epochs"] == 3 and params[4]["quant.format"] == "int4-g32"
    assert params[4]["vocab.keep"] == "all"
    assert params[5] == {**params[4], "vocab.keep": "task"}  # the smallest, trimmed
    seeded = [t for t in study.trials if t.system_attrs.get("fixed_params")]
    assert len(seeded) == 6 and not study.trials[6].system_attrs.get("fixed_params")
    assert len(study.get_trials(states=(COMPLETE,))) == 7  # the sampler takes over after them
    again = run_study(parse_config({**raw_config, "study": {**raw_config["study"],
                                                            "n_trials": 9}}),
                      trial_fn=fake, log=_quiet)
    assert [t.user_attrs["params"] for t in again.trials[:7]] == params  # not enqueued again


def test_an_anchor_takes_the_nearest_number_a_listed_knob_allows(
    raw_config: dict[str, Any],
) -> None:
    raw_config["space"] = {"train.init": "finetuned", "train.epochs": [0, 1],
                           "quant.format": ["fp32", "int4-g32"]}
    raw_config["study"].update(n_trials=5)
    study = run_study(parse_config(raw_config), trial_fn=fake, log=_quiet)
    params = [t.user_attrs["params"] for t in sorted(study.trials, key=lambda t: t.number)]
    anchored = [p for t, p in zip(study.trials, params) if t.system_attrs.get("fixed_params")]
    # int8 and int4-g128 are not in the list: those anchors are dropped
    assert [p["quant.format"] for p in anchored] == ["fp32", "int4-g32", "int4-g32", "int4-g32"]
    assert [p["train.epochs"] for p in anchored] == [0, 0, 1, 1]  # 3 recovery epochs -> 1
    assert [p["vocab.keep"] for p in anchored] == ["all", "task", "all", "task"]
    assert anchored[2]["arch.n_layers"] == 1


def test_a_study_of_fewer_trials_than_anchors_leaves_none_waiting(
    raw_config: dict[str, Any],
) -> None:
    raw_config["space"] = {}  # the default space: 6 anchors
    raw_config["study"].update(n_trials=2)
    study = run_study(parse_config(raw_config), trial_fn=fake, log=_quiet)
    states = [t.state for t in study.trials]
    assert states == [COMPLETE, COMPLETE]  # before: 4 more anchors left WAITING
    assert [t.user_attrs["params"]["quant.format"] for t in study.trials] == ["fp32", "int8"]


def test_anchors_can_be_switched_off(raw_config: dict[str, Any]) -> None:
    raw_config["space"] = {}
    raw_config["study"].update(n_trials=3, anchors=False)
    study = run_study(parse_config(raw_config), trial_fn=fake, log=_quiet)
    assert not any(t.params.get("train.epochs") == 0 and t.params.get("quant.format") == "fp32"
                   and t.params.get("train.init") == "finetuned" for t in study.trials[:1])
    assert all(not t.system_attrs.get("fixed_params") for t in study.trials)


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_a_resumed_seeded_study_draws_no_point_it_already_holds(
    raw_config: dict[str, Any], sampler: str
) -> None:
    raw_config["space"] = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                           "train.epochs": [1, 2, 3], "peft.method": ["none", "lora"]}
    raw_config["study"].update(sampler=sampler, anchors=False)
    for n in (5, 10, 15):
        raw_config["study"]["n_trials"] = n
        study = run_study(parse_config(raw_config), trial_fn=fake, log=_quiet)
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(drawn) == 15 and len(set(drawn)) == 15


@pytest.fixture
def hopeless_csv(tmp_path: Path) -> str:
    """Every text the same: no model can tell the labels apart, so any model predicts one
    class and scores at most the majority's share (0.6): chance."""
    path = tmp_path / "hopeless.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(300):
            writer.writerow(["goal match team coach", "sport" if i % 5 < 3 else "tech"])
    return str(path)


def test_a_trial_at_chance_after_its_first_evaluation_is_stopped_with_the_reason(
    raw_config: dict[str, Any], hopeless_csv: str
) -> None:
    raw_config["task"] = {"dataset": hopeless_csv, "eval_split": 0.25}
    raw_config["study"].update(n_trials=2, sampler="grid", anchors=False)
    # 225 rows at batch 2: 113 steps in the first epoch, evaluated before the second;
    # one-epoch trials are never evaluated part-way, so they complete
    raw_config["space"].update({"train.batch_size": 2, "train.epochs": [2, 1],
                                "train.lr": 1e-3, "peft.method": "none"})
    study = run_study(parse_config(raw_config), log=_quiet)
    stopped = study.get_trials(states=(PRUNED,))
    assert stopped, [t.params for t in study.trials]
    for t in stopped:
        assert t.params["train.epochs"] == 2
        assert t.user_attrs["stopped"].startswith("near chance: accuracy ")
        assert "(chance level " in t.user_attrs["stopped"]
        assert len(t.user_attrs["intermediate"]) == 1
    assert len(stopped) == 1
    done = study.get_trials(states=(COMPLETE,))
    assert [t.params["train.epochs"] for t in done] == [1]  # stopped is not completed
    raw_config["study"].update(sampler="random", n_trials=3)
    # new points only: a trial drawn with an earlier one's knobs would not run again
    raw_config["space"].update({"train.epochs": 1,
                                "train.lr": {"low": 1e-3, "high": 2e-3, "log": True}})
    resumed = run_study(parse_config(raw_config), log=_quiet)
    assert len(resumed.get_trials(states=(COMPLETE,))) == 3  # 1 before, 2 now: none lost
    assert len(resumed.get_trials(states=(PRUNED,))) == 1


def test_the_reference_is_trained_exactly_once_by_8_concurrent_workers(
    raw_config: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    raw_config["study"].update(n_trials=8, sampler="random", anchors=False,
                               early_stopping=False)
    raw_config["space"].update({"train.init": "finetuned", "train.epochs": [0, 1]})
    raw_config["launcher"] = {"type": "multiprocess", "workers": 8, "device": "cpu"}
    study = run_study(parse_config(raw_config), quiet=False)
    assert len(study.get_trials(states=(COMPLETE,))) == 8
    err = capfd.readouterr().err
    assert err.count("reference: fine-tuning the base once for this study") == 1
    trials = {t.number for t in study.trials}
    assert len(trials) == 8


def test_a_trial_that_can_still_reach_the_front_is_not_stopped() -> None:
    from paretune.stopping import StopRule, stop_reason

    # GPU front run 4, trial 9 of `random`: LoRA at 0.533 after a sixth of its training,
    # 0.898 at the end; a front point of 0.89 at its size must not stop it
    front = (({"accuracy": 0.89, "size_mb": 3.1}, 3),)
    rule = StopRule("accuracy", True, chance=0.013, front=front, costs=("size_mb",))
    costs = {"size_mb": 8.0}
    assert stop_reason(rule, 0.533, 1 / 6, costs, steps=313, first=True) is None
    # a trial that cannot get there is stopped, and the reason says what it can reach
    reason = stop_reason(rule, 0.10, 0.2, costs, steps=313, first=True)
    assert reason is not None and "dominated: trial 3" in reason
    assert "can reach at most 0.87" in reason
    # a front point larger than the trial does not stop it
    assert stop_reason(rule, 0.10, 0.2, {"size_mb": 3.0}, steps=313, first=True) is None
    # late in training the bound closes on the trial's own quality
    assert stop_reason(rule, 0.80, 0.9, costs, steps=3000, first=False) is not None
