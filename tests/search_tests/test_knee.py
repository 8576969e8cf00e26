"""The knee of the front: ties go to the better quality, and export says what it chose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from paretune.cli import main
from paretune.search import knee
from paretune.search._front import knee_explained
from paretune.trial import TrialResult, TrialSpec

POINTS = {0: (0.795, 9.27), 1: (0.970, 11.53)}  # equally far from the ideal once scaled


def test_a_tie_goes_to_the_preferred_objective() -> None:
    front = [POINTS[0], POINTS[1]]
    directions = ["maximize", "minimize"]
    assert knee(front, directions) == POINTS[1]  # quality first: the better accuracy
    assert knee(front, directions, prefer=1) == POINTS[0]  # prefer size: the smaller one
    chosen, distance, tied = knee_explained(front, directions)
    assert chosen == POINTS[1] and distance == pytest.approx(1.0) and tied == [POINTS[0]]


def test_no_tie_is_the_closest_point() -> None:
    front = [(0.7, 1.0), (0.9, 2.0), (0.95, 10.0)]  # the middle one is near the ideal corner
    chosen, _, tied = knee_explained(front, ["maximize", "minimize"])
    assert chosen == (0.9, 2.0) and tied == []


def _two_point_study(raw: dict[str, Any], tmp_path: Path, objectives: dict[str, str]) -> None:
    from paretune.search import parse_config, run_study

    def fixed(spec: TrialSpec) -> TrialResult:
        accuracy, size = POINTS[spec.number]
        return TrialResult(spec.number, "complete", {"accuracy": accuracy, "size_mb": size})

    raw["study"]["objectives"] = objectives
    run_study(parse_config(raw), trial_fn=fixed, log=lambda line: None)


@pytest.mark.parametrize("objectives", [
    {"accuracy": "maximize", "size_mb": "minimize"},
    {"size_mb": "minimize", "accuracy": "maximize"},  # quality second: still preferred
])
def test_export_knee_on_a_tie_picks_quality_and_says_why(
    objectives: dict[str, str], raw_config: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _two_point_study(raw_config, tmp_path, objectives)
    out = tmp_path / "knee.yaml"
    capsys.readouterr()
    assert main(["export", "--study", "t", "--storage", raw_config["study"]["storage"],
                 "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["trial"] == 1
    err = capsys.readouterr().err
    assert "knee: trial 1 of 2 on the front" in err
    assert "trial 0 is as close, the tie goes to the better accuracy" in err
