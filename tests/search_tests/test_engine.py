"""The ask/tell engine with a trivial trial function: samplers, storage, failures, resume."""

from __future__ import annotations

import itertools
import random
from typing import Any

import optuna
import pytest

from paretune.errors import ConfigError
from paretune.search import front_trials, open_study, pareto_front, parse_config, run_study
from paretune.search._engine import INTERRUPTED, _twin
from paretune.trial import TrialResult, TrialSpec

COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL


def fake_trial(spec: TrialSpec) -> TrialResult:
    """Accuracy rises with lr, size with lr too: a real trade-off, no model."""
    lr = spec.params["train.lr"]
    metrics = {
        "accuracy": 0.5 + 100 * lr, "size_mb": 10 + 4000 * lr + spec.params["train.epochs"],
        "latency_ms": 1.0, "trainable_params": 5.0, "train_time_s": 0.1,
    }
    return TrialResult(spec.number, "complete", metrics, None, 0.01)


def _cfg(raw: dict[str, Any], **study: Any) -> Any:
    raw["study"].update(study)
    raw["space"]["train.epochs"] = [1, 2]
    return parse_config(raw)


def _quiet(line: str) -> None:
    pass


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "nsga3", "gp", "random", "grid"])
def test_every_sampler_runs_and_stores_every_metric(
    raw_config: dict[str, Any], sampler: str
) -> None:
    raw_config["space"]["peft.method"] = "none"
    if sampler == "grid":
        raw_config["space"]["train.lr"] = [1e-3, 2e-3]
    cfg = _cfg(raw_config, sampler=sampler, n_trials=6)
    study = run_study(cfg, trial_fn=fake_trial, log=_quiet)
    trials = study.get_trials(states=(COMPLETE,))
    assert len(trials) == (4 if sampler == "grid" else 6)  # the grid has 2 x 2 points
    assert study.metric_names == ["accuracy", "size_mb"]
    for t in trials:
        assert {"accuracy", "size_mb", "latency_ms", "trainable_params", "train_time_s"} <= set(
            t.user_attrs
        )
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["size_mb"]]
        assert t.user_attrs["params"]["train.batch_size"] == 16  # fixed knobs recorded too
    if sampler == "grid":
        seen = {(t.params["train.lr"], t.params["train.epochs"]) for t in trials}
        assert seen == set(itertools.product([1e-3, 2e-3], [1, 2]))


def test_front_is_exactly_the_non_dominated_completed_trials(raw_config: dict[str, Any]) -> None:
    def noisy(spec: TrialSpec) -> TrialResult:
        rng = random.Random(spec.number)
        if spec.number % 5 == 3:
            return TrialResult(spec.number, "fail", error="boom")
        return TrialResult(spec.number, "complete", {
            "accuracy": rng.random(), "size_mb": rng.random(), "latency_ms": rng.random(),
            "trainable_params": 1.0, "train_time_s": 1.0,
        })

    study = run_study(_cfg(raw_config, sampler="random", n_trials=25), trial_fn=noisy, log=_quiet)
    done = study.get_trials(states=(COMPLETE,))
    expected = {
        t.number for t in done
        if not any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
            for o in done
        )
    }
    assert {t.number for t in front_trials(study)} == expected
    assert len(study.get_trials(states=(FAIL,))) == 5


def test_pareto_front_mixed_directions() -> None:
    pts = [(0.9, 100.0), (0.8, 50.0), (0.85, 120.0), (0.8, 60.0), (0.95, 200.0)]
    expected = [(0.9, 100.0), (0.8, 50.0), (0.95, 200.0)]
    assert pareto_front(pts, ["maximize", "minimize"]) == expected


def test_failing_trial_is_recorded_and_the_study_goes_on(raw_config: dict[str, Any]) -> None:
    def sometimes(spec: TrialSpec) -> TrialResult:
        if spec.number == 1:
            return TrialResult(spec.number, "fail", error="CUDA out of memory")
        if spec.number == 2:
            return TrialResult(spec.number, "complete", {"accuracy": float("nan"), "size_mb": 1.0})
        return fake_trial(spec)

    study = run_study(_cfg(raw_config, n_trials=4), trial_fn=sometimes, log=_quiet)
    states = [t.state for t in study.trials]
    assert states == [COMPLETE, FAIL, FAIL, COMPLETE]
    assert study.trials[1].user_attrs["error"] == "CUDA out of memory"
    assert "objective accuracy is nan" in study.trials[2].user_attrs["error"]


def test_resume_counts_completed_trials(raw_config: dict[str, Any]) -> None:
    run_study(_cfg(raw_config, n_trials=2), trial_fn=fake_trial, log=_quiet)
    study = run_study(_cfg(raw_config, n_trials=5), trial_fn=fake_trial, log=_quiet)
    assert len(study.get_trials(states=(COMPLETE,))) == 5
    again = run_study(_cfg(raw_config, n_trials=5), trial_fn=fake_trial, log=_quiet)
    assert len(again.trials) == 5


def test_resume_with_another_model_is_refused(raw_config: dict[str, Any], tmp_path: Any) -> None:
    import shutil

    run_study(_cfg(raw_config, n_trials=1), trial_fn=fake_trial, log=_quiet)
    other = tmp_path / "other"
    shutil.copytree(raw_config["model"]["name"], other)
    raw_config["model"]["name"] = str(other)
    with pytest.raises(ConfigError, match="resumed study keeps its model"):
        open_study(_cfg(raw_config))


def test_interrupt_records_running_trial_and_keeps_completed(raw_config: dict[str, Any]) -> None:
    def interrupted(spec: TrialSpec) -> TrialResult:
        if spec.number == 2:
            raise KeyboardInterrupt
        return fake_trial(spec)

    cfg = _cfg(raw_config, n_trials=4)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, trial_fn=interrupted, log=_quiet)
    study = optuna.load_study(study_name="t", storage=cfg.study.storage)
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE, FAIL]
    assert "interrupted (Ctrl-C)" in study.trials[2].user_attrs["error"]
    resumed = run_study(cfg, trial_fn=fake_trial, log=_quiet)
    assert len(resumed.get_trials(states=(COMPLETE,))) == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a bare ask, as Optuna's
def test_trial_without_heartbeat_is_failed_after_the_grace_period(
    raw_config: dict[str, Any],
) -> None:
    """A trial asked by a driver that died before its first heartbeat (or by an older
    paretune): the next driver waits for it as for any running trial, fails it once it is
    older than the grace period, and replaces it."""
    cfg = _cfg(raw_config, n_trials=1, heartbeat_interval=1, grace_period=2)
    study = open_study(cfg)
    study.ask()  # RUNNING, no heartbeat: its driver died at once
    study = run_study(cfg, trial_fn=fake_trial, log=_quiet)
    assert study.trials[0].state == FAIL and study.trials[0].user_attrs["error"] == INTERRUPTED
    assert [t.state for t in study.trials[1:]] == [COMPLETE]


def test_constraints_mark_infeasible_and_reach_the_sampler(raw_config: dict[str, Any]) -> None:
    raw_config["study"]["constraints"] = ["accuracy >= 0.65"]
    study = run_study(_cfg(raw_config, n_trials=8, sampler="tpe"), trial_fn=fake_trial, log=_quiet)
    done = study.get_trials(states=(COMPLETE,))
    assert study.user_attrs["paretune.constraints"] == ["accuracy >= 0.65"]
    for t in done:
        assert t.user_attrs["feasible"] == (t.user_attrs["accuracy"] >= 0.65)
        violation = pytest.approx(0.65 - t.user_attrs["accuracy"])
        # the list Optuna's samplers and optuna-dashboard both read
        assert t.system_attrs["constraints"] == [violation]
        assert list(t.constraints.values()) == [violation]
    assert all(t.user_attrs["feasible"] for t in front_trials(study))


def test_bad_constraint_text(raw_config: dict[str, Any]) -> None:
    raw_config["study"]["constraints"] = ["accuracy > 0.9"]
    with pytest.raises(ConfigError, match="must look like 'METRIC >= NUMBER'"):
        parse_config(raw_config)


def test_grid_expands_conditional_branches_without_duplicates(raw_config: dict[str, Any]) -> None:
    raw_config["space"].update({
        "train.lr": 1e-3, "peft.method": ["none", "lora"], "lora.r": [4, 8],
        "lora.alpha": 8, "lora.dropout": 0.0, "lora.targets": "qv",
    })
    cfg = _cfg(raw_config, sampler="grid", n_trials=100)  # train.epochs: [1, 2]
    study = run_study(cfg, trial_fn=fake_trial, log=_quiet)
    seen = sorted(tuple(sorted(t.params.items())) for t in study.trials)
    assert len(study.trials) == 6 == len(set(seen))  # (none + lora x 2 ranks) x 2 epochs
    resumed = run_study(cfg, trial_fn=fake_trial, log=_quiet)
    assert len(resumed.trials) == 6


def test_grid_needs_finite_knobs(raw_config: dict[str, Any]) -> None:
    raw_config["study"]["sampler"] = "grid"
    with pytest.raises(ConfigError, match="train.lr is a continuous range"):
        parse_config(raw_config)


def test_timeout_starts_no_trial_after_it_and_lets_the_running_one_finish(
    raw_config: dict[str, Any],
) -> None:
    import time

    def slow(spec: TrialSpec) -> TrialResult:
        time.sleep(0.4)
        return fake_trial(spec)

    cfg = _cfg(raw_config, n_trials=20, timeout=1.0)
    lines: list[str] = []
    study = run_study(cfg, trial_fn=slow, log=lines.append)
    states = [t.state for t in study.trials]
    assert 2 <= len(states) <= 4  # asked at 0, 0.4, 0.8 s: none after the second
    assert set(states) == {COMPLETE}  # the trial running at the deadline finished
    assert any("study.timeout of 1s reached" in line for line in lines)
    resumed = run_study(_cfg(raw_config, n_trials=len(states) + 2), trial_fn=fake_trial,
                        log=_quiet)
    assert len(resumed.get_trials(states=(COMPLETE,))) == len(states) + 2


def test_timeout_must_be_positive(raw_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="study.timeout must be a positive number"):
        _cfg(raw_config, timeout=0)


def test_a_drawn_twin_of_an_earlier_trial_is_not_run_again(raw_config: dict[str, Any]) -> None:
    # a space of two points and a budget of three: the third trial can only be a twin
    raw_config["space"].update({"peft.method": "none", "train.lr": [1e-3, 2e-3]})
    raw_config["study"].update(sampler="random", n_trials=3)
    cfg = parse_config(raw_config)
    ran: list[dict[str, Any]] = []

    def counting(spec: TrialSpec) -> TrialResult:
        ran.append(dict(spec.params))
        return fake_trial(spec)

    lines: list[str] = []
    study = run_study(cfg, trial_fn=counting, log=lines.append)
    done = study.get_trials(states=(COMPLETE,))
    twins = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(done) == 2 == len(ran)
    assert ran[0] != ran[1]  # the second trial run is a new point
    assert twins
    assert "the space may have no new point left (2 completed)" in lines[-1]
    for t in twins:
        assert t.state == optuna.trial.TrialState.PRUNED
        first = study.trials[t.user_attrs["duplicate_of"]]
        assert first.user_attrs["params"] == t.user_attrs["params"]
        assert "duplicate_of" not in first.user_attrs
        assert f"the same knobs as trial {first.number}" in t.user_attrs["stopped"]
    assert sum("skipped: the same knobs as trial" in line for line in lines) == len(twins)


@pytest.mark.parametrize("n_layers,selections", [(2, set()), (1, {"first", "last"})])
def test_which_layers_are_kept_is_not_drawn_when_all_are(
    n_layers: int, selections: set[str], raw_config: dict[str, Any],
) -> None:
    # the tiny BERT has 2 layers: keeping the first 2 or the last 2 is the same model
    raw_config["space"].update({"peft.method": "none", "train.lr": 1e-3,
                                "arch.n_layers": n_layers,
                                "arch.layer_selection": ["first", "last"]})
    raw_config["study"].update(sampler="grid", n_trials=2, anchors=False)
    ran: list[dict[str, Any]] = []

    def counting(spec: TrialSpec) -> TrialResult:
        ran.append(dict(spec.params))
        return fake_trial(spec)

    study = run_study(parse_config(raw_config), trial_fn=counting, log=lambda line: None)
    assert len(ran) == max(1, len(selections))  # one model at full depth
    drawn = {t.user_attrs["params"].get("arch.layer_selection") for t in study.trials}
    assert drawn - {None} == selections
    assert not [t for t in study.trials if "duplicate_of" in t.user_attrs]


def test_a_point_that_differs_only_in_what_changes_nothing_is_a_twin(
    raw_config: dict[str, Any],
) -> None:
    # a study holds a trial drawn with a layer selection at full depth, as drawn before
    # such a selection was left undrawn: the same point without it is the same model
    raw_config["space"].update({"peft.method": "none", "train.lr": 1e-3, "arch.n_layers": 2})
    raw_config["study"].update(sampler="random", n_trials=2, anchors=False)
    cfg = parse_config(raw_config)
    first = run_study(cfg, trial_fn=fake_trial, log=lambda line: None).trials[0]
    held = {**first.user_attrs["params"], "arch.layer_selection": "last"}
    assert held != first.user_attrs["params"]
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    assert _twin(study, -1, held, cfg.info) == first.number
    assert _twin(study, -1, {**held, "arch.n_layers": 1}, cfg.info) is None


def test_resume_on_edited_data_is_refused(raw_config: dict[str, Any], tmp_path: Any) -> None:
    import shutil

    data = tmp_path / "data.csv"
    shutil.copy(raw_config["task"]["dataset"], data)
    raw_config["task"]["dataset"] = str(data)
    run_study(_cfg(raw_config, n_trials=1), trial_fn=fake_trial, log=_quiet)
    run_study(_cfg(raw_config, n_trials=2), trial_fn=fake_trial, log=_quiet)  # same rows
    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:-5]))  # five rows fewer
    with pytest.raises(ConfigError, match="created on other rows than task.dataset .* restore "
                                          "the file, or use a new study.name"):
        run_study(_cfg(raw_config, n_trials=3), trial_fn=fake_trial, log=_quiet)
    assert len(optuna.load_study(study_name=raw_config["study"]["name"],
                                 storage=raw_config["study"]["storage"]).trials) == 2
