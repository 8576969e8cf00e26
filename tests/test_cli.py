"""The command line: light to start, one-line errors, progress on stderr, hypervolume in front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from paretune.cli import main


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


def _write(raw: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_run_shows_status_lines_and_training_progress(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", _write(raw_config, tmp_path)]) == 0
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
    assert main(["run", _write(raw_config, tmp_path), "--quiet"]) == 0
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
    assert main(["run", _write(raw_config, tmp_path), "-q"]) == 0
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
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paretune.db").touch()  # an empty storage where --storage is left out
    if argv[0] in ("front", "plot"):
        argv = [*argv, "--storage", f"sqlite:///{tmp_path / 'paretune.db'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paretune: error: ")
    assert message in err
