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


@pytest.mark.parametrize("params,library", [
    ({"quant.format": "int8"}, "onnx"),
    ({"peft.method": "prefix", "prompt.virtual_tokens": 4}, "peft"),
    ({"vocab.keep": "task", "quant.format": "int8"}, "onnx"),
], ids=["int8", "prefix-adapter", "trimmed-vocab-int8"])
def test_materialized_model_card_loads_as_written_without_paretune(
    params: dict[str, Any], library: str, raw_config: dict[str, Any], tmp_path: Path,
    needs_prefix_tuning: Any,
) -> None:
    """ONNX Runtime int8, and an adapter shipped beside its base: the card's load code, run
    as written in a process where paretune cannot be imported, classifies the eval rows at
    the recorded accuracy; paretune's own loader agrees; the card's metadata says what the
    artifact is; weight files are readable by others, as ordinary files are."""
    import json
    import os
    import stat
    import subprocess
    import sys

    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    from paretune import data
    from paretune.models import load_artifact
    if library == "peft":  # the prompt adapter
        needs_prefix_tuning("bert")
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

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == library
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.base_model is None  # a local random-init model has no hub id
    if "vocab.keep" in params:  # the card says how many tokens were kept, and which
        n = len(AutoTokenizer.from_pretrained(out))
        assert f"- vocabulary: {n} of " in card.text and "training split's tokens" in card.text
    [result] = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    rows = data.load_task_data(recipe["task"], recipe["seed"])
    names = json.loads((out / ("base/config.json" if library == "peft" else "config.json"))
                       .read_text())["id2label"]
    expected = [names[str(y)] for y in rows.eval_labels]
    check = (f"texts = {rows.eval_texts!r}\nexpected = {expected!r}\n"
             "got = predict(texts)\n"
             "print('RESULT', sum(a == b for a, b in zip(got, expected)) / len(expected))\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nsys.modules['paretune'] = None\n" + snippet + check],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "",
                                             "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = float(proc.stdout.rpartition("RESULT ")[2])
    assert abs(accuracy - recipe["metrics"]["accuracy"]) <= 0.01
    assert abs(result.metric_value - accuracy) <= 0.01  # the card's number is this model's

    model = load_artifact(out)
    split = data.tokenize(
        AutoTokenizer.from_pretrained(out), rows.eval_texts, rows.eval_labels,
        recipe["model"]["max_length"], "materialized-eval", None,
    )
    with torch.inference_mode():
        logits = model(input_ids=split.input_ids, attention_mask=split.attention_mask).logits
    assert abs(float((logits.argmax(-1) == split.labels).float().mean()) - accuracy) <= 0.01
    for path in out.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & stat.S_IROTH, path  # not private: rw-r--r--


def test_a_recipe_replays_on_its_study_cache_where_it_exists(
    small_study: Any, tmp_path: Path
) -> None:
    """A from-reference recipe replayed or materialized on the study's machine finds the
    reference the study trained in its cache_dir instead of fine-tuning it again."""
    from paretune.search._recipe import recipe_spec

    recipe = _export_front(small_study, tmp_path / "front")[0]
    cache = small_study.raw["study"]["cache_dir"]
    assert recipe["cache_dir"] == str(Path(cache).expanduser()) and Path(cache).is_dir()
    assert recipe_spec(recipe).context["cache_dir"] == recipe["cache_dir"]
    assert recipe_spec(recipe, cache_dir=str(tmp_path)).context["cache_dir"] == str(tmp_path)
    moved = {**recipe, "cache_dir": str(tmp_path / "not-here")}  # another machine's path
    assert recipe_spec(moved).context["cache_dir"] == str(Path("~/.cache/paretune").expanduser())


def test_a_two_class_model_gets_its_label_names(tmp_path: Path) -> None:
    import json

    from transformers import BertConfig

    from paretune.search._materialize import _name_labels

    # transformers writes no id2label for two classes: the card's code read it and failed
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, num_labels=2).save_pretrained(tmp_path)
    assert "id2label" not in json.loads((tmp_path / "config.json").read_text())
    _name_labels(tmp_path, ["negative", "positive"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert BertConfig.from_pretrained(tmp_path).id2label == {0: "negative", 1: "positive"}
