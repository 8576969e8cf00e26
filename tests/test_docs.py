"""The README documents what the code has."""

from __future__ import annotations

import re
from pathlib import Path

import paretune.spaces as spaces
from paretune.objectives import objectives

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_knob_is_documented() -> None:
    table = README.split("<!-- knobs -->")[1].split("<!-- /knobs -->")[0]
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)`", table, flags=re.M))
    assert documented == set(spaces.knob_names())


def test_every_metric_is_documented() -> None:
    for objective in objectives():
        assert f"| `{objective.name}` |" in README


def test_quick_start_commands_are_marked_for_ci() -> None:
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    for marker in ("demo-command", "test-command"):
        assert f"<!-- {marker} -->" in README and f"block {marker}" in ci


def test_every_example_config_is_valid(tiny_model: str) -> None:
    """Every shipped config parses: known keys, known knobs, ranges within each family's
    rules (the model is swapped for a local one; the data is not read)."""
    from paretune.search import load_config

    root = Path(__file__).parents[1]
    paths = [*sorted((root / "examples").glob("*.yaml")), root / "paretune" / "demo.yaml"]
    assert len(paths) >= 4
    for path in paths:
        cfg = load_config(str(path), [f"model.name={tiny_model}"], check_data=False)
        assert cfg.space, path
