"""A study on a user's own files, given by relative paths: macro_f1 as an objective end to
end, the recipe replayed and materialized from another directory, the eval set on the front
and on the model card, and a failed materialize that leaves nothing behind."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from paretune import data
from paretune.cli import main


@dataclass(frozen=True)
class OwnStudy:
    storage: str
    recipe: Path
    project: Path


@pytest.fixture(scope="module")
def own_study(
    tmp_path_factory: pytest.TempPathFactory, tiny_csv: str, tiny_model: str,
    baseline_space: dict[str, Any],
) -> OwnStudy:
    """One trial of {macro_f1, size_mb}, run from the project directory with its model and
    data given relative to it; its recipe exported there."""
    project = tmp_path_factory.mktemp("own-data") / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(tiny_csv, project / "data" / "topics.csv")
    shutil.copytree(tiny_model, project / "model")
    storage = f"sqlite:///{project / 'study.db'}"
    raw = {
        "study": {"name": "own", "storage": storage, "n_trials": 1,
                  "objectives": {"macro_f1": "maximize", "size_mb": "minimize"},
                  "cache_dir": str(project / "cache")},
        "model": {"name": "model", "max_length": 32},
        "task": {"dataset": "data/topics.csv", "eval_split": 0.25},
        "space": {**baseline_space, "train.lr": 5e-3, "train.epochs": 3,
                  "train.batch_size": 16, "train.weight_decay": 0.0, "peft.method": "none"},
        "measure": {"latency_repeats": 2, "latency_warmup": 1},
    }
    (project / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        assert main(["run", "study.yaml", "-q"]) == 0
        assert main(["export", "--study", "own", "--storage", storage, "--trial", "0",
                     "-o", "recipe.yaml"]) == 0
    return OwnStudy(storage, project / "recipe.yaml", project)


def test_macro_f1_is_an_objective_end_to_end(own_study: OwnStudy) -> None:
    from paretune.search import load_study

    study = load_study("own", own_study.storage)
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("error")
    assert study.metric_names == ["macro_f1", "size_mb"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert trial.values[0] == trial.user_attrs["macro_f1"]
    assert 0.0 < trial.values[0] <= 1.0 and "accuracy" in trial.user_attrs


def test_recipe_stores_absolute_paths_and_replays_from_another_directory(
    own_study: OwnStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = yaml.safe_load(own_study.recipe.read_text())
    assert recipe["task"]["dataset"] == str(own_study.project / "data" / "topics.csv")
    assert recipe["model"]["name"] == str(own_study.project / "model")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["run", str(own_study.recipe)]) == 0
    replay = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    recorded, replayed = (float(v) for v in replay["macro_f1"])
    assert abs(recorded - replayed) <= 0.01


def test_front_states_the_eval_set(
    own_study: OwnStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["front", "--study", "own", "--storage", own_study.storage]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("eval set: 45 rows, held out at random from the 180 usable rows of ")
    assert "topics.csv" in last and last.endswith("max_length 32 tokens")


def test_materialized_card_lists_eval_rows_and_class_counts(
    own_study: OwnStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # somewhere the relative paths of the study do not exist
    assert main(["materialize", str(own_study.recipe), "-o", "out", "--quiet"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    recipe = yaml.safe_load(own_study.recipe.read_text())
    split = data.load_task_data(recipe["task"], recipe["seed"])
    assert f"- eval rows: {len(split.eval_texts)}, held out at random from the 180" in card
    assert "- max_length: 32 tokens" in card
    section = card.split("| class | eval rows | predicted |")[1].split("\n\n")[0]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    counts = {row.split("|")[1].strip(" `"): row.split("|")[2:4] for row in table}
    assert sorted(counts) == ["money", "sport", "tech"]
    for i, name in enumerate(split.label_names):
        assert int(counts[name][0]) == split.eval_labels.count(i)
    assert sum(int(predicted) for _, predicted in counts.values()) == len(split.eval_texts)


def test_failed_materialize_leaves_nothing_behind(
    own_study: OwnStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paretune.errors import TrialFailed
    from paretune.search import _materialize

    recipe = yaml.safe_load(own_study.recipe.read_text())
    failing = {**recipe, "params": {**recipe["params"], "train.precision": "fp16"}}  # not on CPU
    with pytest.raises(TrialFailed, match="fp16"):
        _materialize.materialize(failing, tmp_path / "new" / "model", device="cpu")
    assert not (tmp_path / "new").exists()

    def broken_card(*args: Any) -> str:
        raise RuntimeError("the card could not be written")

    monkeypatch.setattr(_materialize, "model_card", broken_card)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="card"):
        _materialize.materialize(recipe, tmp_path / "empty", device="cpu")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
