"""export --front, then materialize: the saved model reloads and reproduces its accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from paretune.cli import main
from paretune.errors import ConfigError


def _export_front(small_study: Any, out: Path) -> list[dict[str, Any]]:
    rc = main(["export", "--study", small_study.name, "--storage", small_study.storage,
               "--front", "-o", str(out)])
    assert rc == 0
    return [yaml.safe_load(p.read_text()) for p in sorted(out.glob("trial-*.yaml"))]


def _accuracy(model_dir: Path, recipe: dict[str, Any]) -> float:
    """Accuracy of the saved model on the recipe's eval split, computed without paretune's
    pipeline: plain transformers on the rows."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from paretune import data

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    split = data.load_task_data(recipe["task"], recipe["seed"])
    with torch.inference_mode():
        enc = tokenizer(split.eval_texts, padding=True, truncation=True,
                        max_length=recipe["model"]["max_length"], return_tensors="pt")
        preds = model(**enc).logits.argmax(-1)
    return float((preds == torch.tensor(split.eval_labels)).float().mean())


def test_export_front_writes_one_recipe_per_front_trial(small_study: Any, tmp_path: Path) -> None:
    from paretune.search import front_trials, load_study

    recipes = _export_front(small_study, tmp_path / "front")
    front = front_trials(load_study(small_study.name, small_study.storage))
    assert [r["trial"] for r in recipes] == [t.number for t in front]
    assert all(r["paretune_recipe"] == 1 and "accuracy" in r["metrics"] for r in recipes)


def test_materialized_model_reloads_and_reproduces_its_accuracy(
    small_study: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = _export_front(small_study, tmp_path / "front")
    best = max(recipes, key=lambda r: r["metrics"]["accuracy"])
    assert best["metrics"]["accuracy"] > 0.45  # it learned something: 3 balanced classes
    out = tmp_path / "model"
    rc = main(["materialize", str(tmp_path / "front" / f"trial-{best['trial']}.yaml"),
               "-o", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0
    assert "re-measured" in capsys.readouterr().out
    assert abs(_accuracy(out, best) - best["metrics"]["accuracy"]) <= 0.01

    card = (out / "README.md").read_text()
    from paretune import data

    fingerprint = data.load_task_data(best["task"], best["seed"]).fingerprint
    assert f"data fingerprint: `{fingerprint}`" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    for lib in ("torch", "transformers", "peft", "optuna", "paretune"):
        assert f"| {lib} |" in card
    assert f"| accuracy (maximize) | {best['metrics']['accuracy']:.6g} |" in card
    assert "train.lr:" in card
    assert yaml.safe_load((out / "recipe.yaml").read_text()) == best
    config = yaml.safe_load((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["money", "sport", "tech"]


def test_materialize_refuses_a_non_empty_directory(small_study: Any, tmp_path: Path) -> None:
    from paretune.search._materialize import materialize

    recipe = _export_front(small_study, tmp_path / "front")[0]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="must be a new or empty directory"):
        materialize(recipe, tmp_path / "busy")
    with pytest.raises(ConfigError, match="not a recipe"):
        materialize({"model": "x"}, tmp_path / "new")


@pytest.mark.parametrize("params", [
    {"quant.bits": 8, "quant.scheme": "channel"},
    {"peft.method": "prefix", "prompt.virtual_tokens": 4},
], ids=["int8", "prefix-adapter"])
def test_materialized_compressed_model_reloads_with_load_artifact(
    params: dict[str, Any], raw_config: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Packed int8 weights and an adapter shipped beside its base: the card's loader brings
    back the model that was measured."""
    import torch
    from transformers import AutoTokenizer

    from paretune import data
    from paretune.models import load_artifact

    raw_config["study"]["n_trials"] = 1
    raw_config["space"].update({"train.epochs": 3, "peft.method": "none", **params})
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw_config))
    storage = raw_config["study"]["storage"]
    assert main(["run", str(config), "-q"]) == 0
    assert main(["export", "--study", "t", "--storage", storage, "--trial", "0",
                 "-o", str(tmp_path / "r.yaml")]) == 0
    recipe = yaml.safe_load((tmp_path / "r.yaml").read_text())
    out = tmp_path / "model"
    assert main(["materialize", str(tmp_path / "r.yaml"), "-o", str(out), "--quiet"]) == 0
    card = (out / "README.md").read_text()
    assert 'model = load_artifact("PATH")' in card

    model = load_artifact(out)
    rows = data.load_task_data(recipe["task"], recipe["seed"])
    split = data.tokenize(
        AutoTokenizer.from_pretrained(out), rows.eval_texts, rows.eval_labels,
        recipe["model"]["max_length"], "materialized-eval", None,
    )
    with torch.inference_mode():
        logits = model(input_ids=split.input_ids, attention_mask=split.attention_mask).logits
    accuracy = float((logits.argmax(-1) == split.labels).float().mean())
    assert abs(accuracy - recipe["metrics"]["accuracy"]) <= 0.01
