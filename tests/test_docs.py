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


def test_every_example_config_is_valid(tmp_path: Path, topic_texts: list[str]) -> None:
    """Every shipped config parses: known keys, known knobs, values within each family's
    rules for its model (swapped for a tiny local one of the same architecture and depth;
    the data is not read)."""
    from paretune.models import make_tiny_llama, make_tiny_model
    from paretune.search import load_config

    stand_ins = {  # alias -> a tiny model of its type and depth
        "minilm": make_tiny_model(tmp_path / "bert", topic_texts, num_layers=6),
        "smollm2-135m": make_tiny_llama(tmp_path / "llama", topic_texts, num_layers=30,
                                        num_heads=9, num_kv_heads=3, hidden_size=36),
    }
    root = Path(__file__).parents[1]
    paths = [*sorted((root / "examples").glob("*.yaml")), root / "paretune" / "demo.yaml"]
    assert len(paths) >= 4
    for path in paths:
        model = re.search(r"name: (minilm|smollm2-135m)", path.read_text())
        assert model, path
        cfg = load_config(str(path), [f"model.name={stand_ins[model.group(1)]}"],
                          check_data=False)
        assert cfg.space, path
