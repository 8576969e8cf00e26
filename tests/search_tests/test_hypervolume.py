"""Hypervolume against independent computations on hand-made fronts, and its recorded history."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from paretune.errors import ConfigError
from paretune.search._hypervolume import (
    HISTORY_KEY,
    REFERENCE_KEY,
    FrontTracker,
    derive_reference_point,
    hypervolume,
    hypervolume_history,
)

MIN2 = ["minimize", "minimize"]
MIN3 = ["minimize", "minimize", "minimize"]


def test_2d_staircase_is_the_hand_computed_area() -> None:
    # strips [1,4]x[3,4] + [2,4]x[2,3] + [3,4]x[1,2] = 3 + 2 + 1
    assert hypervolume([(1, 3), (2, 2), (3, 1)], MIN2, (4, 4)) == pytest.approx(6.0)


def test_maximized_objectives_are_flipped() -> None:
    # accuracy up, size down: strips 0.1 wide, 1, 2 and 3 high
    front = [(0.9, 3.0), (0.8, 2.0), (0.7, 1.0)]
    assert hypervolume(front, ["maximize", "minimize"], (0.6, 4.0)) == pytest.approx(0.6)
    # size up, accuracy down: the mirror image, strips 1, 2 and 3 high and 0.1 wide
    assert hypervolume(front, ["minimize", "maximize"], (1.0, 0.0)) == pytest.approx(0.6)


def test_dominated_and_outside_points_add_nothing() -> None:
    front = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume([*front, (3, 3), (5, 0), (0, 9)], MIN2, (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(5, 5)], MIN2, (4, 4)) == 0.0
    assert hypervolume([], MIN2, (4, 4)) == 0.0


def test_3d_hand_made() -> None:
    assert hypervolume([(1, 1, 1)], MIN3, (2, 3, 4)) == pytest.approx(6.0)
    # two 2x1x2 boxes overlapping in a 1x1x2 box
    assert hypervolume([(1, 2, 1), (2, 1, 1)], MIN3, (3, 3, 3)) == pytest.approx(6.0)


def _inclusion_exclusion(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Exact union volume of the boxes [p, ref]: sum over subsets of the intersection boxes."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = [max(c) for c in zip(*subset)]
            vol = 1.0
            for c, r in zip(corner, ref):
                vol *= max(0.0, r - c)
            total += (-1) ** (k + 1) * vol
    return total


def _monte_carlo(points: list[tuple[float, ...]], ref: tuple[float, ...], n: int) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    low = np.min(np.asarray(points), axis=0)
    box = np.asarray(ref) - low
    samples = low + rng.random((n, len(ref))) * box
    pts = np.asarray(points)
    hit = (samples[:, None, :] >= pts[None, :, :]).all(axis=2).any(axis=1)
    return float(hit.mean() * np.prod(box))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_3d_random_fronts_match_inclusion_exclusion_and_monte_carlo(seed: int) -> None:
    rng = random.Random(seed)
    points = [tuple(rng.uniform(0, 1) for _ in range(3)) for _ in range(7)]
    ref = (1.1, 1.2, 1.3)
    exact = _inclusion_exclusion(points, ref)
    assert hypervolume(points, MIN3, ref) == pytest.approx(exact, rel=1e-9)
    assert hypervolume(points, MIN3, ref) == pytest.approx(
        _monte_carlo(points, ref, 200_000), rel=0.02
    )


def test_3d_with_a_maximized_objective_matches_the_flipped_front() -> None:
    rng = random.Random(5)
    points = [(rng.random(), rng.random(), rng.random()) for _ in range(6)]
    flipped = [(-a, b, c) for a, b, c in points]
    directions = ["maximize", "minimize", "minimize"]
    assert hypervolume(points, directions, (-0.1, 1.5, 1.5)) == pytest.approx(
        _inclusion_exclusion(flipped, (0.1, 1.5, 1.5)), rel=1e-9
    )


def test_derived_reference_point_is_worst_plus_a_tenth_of_the_range() -> None:
    points = [(0.9, 10.0), (0.5, 30.0), (0.7, 20.0)]
    ref = derive_reference_point(points, ["maximize", "minimize"])
    assert ref == pytest.approx([0.5 - 0.04, 30.0 + 2.0])
    # one value only: moved by a tenth of its magnitude, or by 0.1 when it is 0
    assert derive_reference_point([(2.0, 0.0)], MIN2) == pytest.approx([2.2, 0.1])
    assert derive_reference_point([], MIN2) is None


def _study(directions: list[str], values: list[tuple[float, ...]]) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=directions)
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=list(v)))
    return study


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_recorded_history_matches_optuna_plot_hypervolume_history() -> None:
    from optuna.visualization import plot_hypervolume_history

    rng = random.Random(0)
    values = [(rng.random(), rng.uniform(1, 5), rng.random()) for _ in range(25)]
    directions = ["maximize", "minimize", "minimize"]
    ref = [-0.05, 6.0, 1.1]
    study = _study(directions, values)
    tracker = FrontTracker(study, ref)
    history = study.user_attrs[HISTORY_KEY]
    assert study.user_attrs[REFERENCE_KEY] == ref
    assert history["trials"] == list(range(25))
    expected = list(plot_hypervolume_history(study, ref).data[0].y)
    assert history["values"] == pytest.approx(expected, rel=1e-9)
    assert tracker.hypervolume == pytest.approx(expected[-1])


def test_history_grows_by_one_and_follows_a_moving_derived_reference_point() -> None:
    import optuna

    directions = ["maximize", "minimize"]
    study = _study(directions, [(0.8, 2.0), (0.6, 1.0)])
    tracker = FrontTracker(study)  # no configured point: derived from the trials
    assert study.user_attrs.get(REFERENCE_KEY) is None
    first = study.user_attrs[HISTORY_KEY]
    assert len(first["values"]) == 2
    # inside the observed box: the reference point stays, one value is appended
    study.add_trial(optuna.trial.create_trial(values=[0.7, 1.5]))
    tracker.update()
    second = study.user_attrs[HISTORY_KEY]
    assert second["reference_point"] == first["reference_point"]
    assert second["values"][:2] == first["values"]
    # a new worst value moves the reference point: the whole history is recomputed
    study.add_trial(optuna.trial.create_trial(values=[0.2, 9.0]))
    tracker.update()
    third = study.user_attrs[HISTORY_KEY]
    ref = third["reference_point"]
    assert ref == pytest.approx([0.2 - 0.06, 9.0 + 0.8])
    trials = study.get_trials()
    assert third["values"] == pytest.approx(hypervolume_history(trials, directions, ref))
    assert third["values"][-1] == pytest.approx(
        hypervolume([t.values for t in trials], directions, ref)
    )
    assert all(a <= b + 1e-12 for a, b in zip(third["values"], third["values"][1:]))


def test_infeasible_trials_are_not_on_the_front() -> None:
    import optuna

    study = _study(MIN2, [(1.0, 1.0)])
    study.add_trial(optuna.trial.create_trial(values=[0.0, 0.0], user_attrs={"feasible": False}))
    FrontTracker(study, [2.0, 2.0])
    assert study.user_attrs[HISTORY_KEY]["values"] == [1.0]


def _raw(raw_config: dict[str, Any], ref: Any) -> dict[str, Any]:
    return {**raw_config, "study": {**raw_config["study"], "reference_point": ref}}


def test_reference_point_config(raw_config: dict[str, Any]) -> None:
    from paretune.search import parse_config

    cfg = parse_config(_raw(raw_config, {"size_mb": 100, "accuracy": 0.0}))
    assert cfg.reference_point() == [0.0, 100.0]  # in objective order
    assert parse_config(_raw(raw_config, [0.1, 50])).reference_point() == [0.1, 50.0]
    assert parse_config(raw_config).reference_point() is None


@pytest.mark.parametrize(
    "ref, message",
    [
        ({"accuracy": 0.0}, "needs a value for every objective, but size_mb has none"),
        ({"accuracy": 0.0, "size_mbb": 1}, "Did you mean 'size_mb'"),
        ({"accuracy": "low", "size_mb": 1}, "study.reference_point.accuracy must be a finite"),
        ({"accuracy": float("inf"), "size_mb": 1}, "must be a finite number, but got inf"),
        ([1.0], "needs one value per objective (accuracy, size_mb), but got 1 values"),
        ("origin", "must map each objective to a number"),
    ],
)
def test_bad_reference_points_are_config_errors(
    raw_config: dict[str, Any], ref: Any, message: str
) -> None:
    from paretune.search import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(_raw(raw_config, ref))
    assert message in str(err.value)


def test_engine_records_the_history_after_each_completed_trial(small_study: Any) -> None:
    import optuna

    from paretune.search import front_trials, load_study

    study = load_study(small_study.name, small_study.storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    history = study.user_attrs[HISTORY_KEY]
    assert history["trials"] == [t.number for t in done]
    assert len(history["values"]) == len(done) == 5  # trial 2 failed on purpose
    directions = [d.name.lower() for d in study.directions]
    front = [t.values for t in front_trials(study)]
    assert history["values"][-1] == pytest.approx(
        hypervolume(front, directions, history["reference_point"])
    )
    assert history["reference_point"] == pytest.approx(
        derive_reference_point([t.values for t in done], directions)
    )


@pytest.mark.parametrize("dims,seed", [(2, 0), (2, 1), (3, 2), (4, 3), (5, 4)])
def test_own_exact_hypervolume_matches_inclusion_exclusion(dims: int, seed: int) -> None:
    """paretune's own computation, used where Optuna's (not public API) is missing."""
    from paretune.search._hypervolume import exact_hypervolume

    rng = random.Random(seed)
    points = [tuple(rng.uniform(0, 1) for _ in range(dims)) for _ in range(7)]
    ref = tuple(1.0 + 0.1 * i for i in range(dims))
    assert exact_hypervolume(points, ref) == pytest.approx(
        _inclusion_exclusion(points, ref), rel=1e-9
    )


def test_hypervolume_without_optuna_s_private_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "optuna._hypervolume", None)  # import fails
    assert hypervolume([(1, 3), (2, 2), (3, 1)], MIN2, (4, 4)) == pytest.approx(6.0)
    front = [(0.9, 3.0), (0.8, 2.0), (0.7, 1.0)]
    assert hypervolume(front, ["maximize", "minimize"], (0.6, 4.0)) == pytest.approx(0.6)
    assert hypervolume([(1, 2, 1), (2, 1, 1)], MIN3, (3, 3, 3)) == pytest.approx(6.0)
