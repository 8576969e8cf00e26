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
