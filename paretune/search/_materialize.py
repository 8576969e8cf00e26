"""Materialize a recipe: rebuild its model exactly as the trial did and save it to ship.

The trial runs again through ``run_trial(spec, artifact_dir=DIR)``: the same stages (train,
merge, compress), the same seed, the same artifact writer (packed quantized weights where
the recipe quantizes), so the directory holds what the trial measured, plus its tokenizer,
the recipe and a model card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError, TrialFailed
from paretune.search._recipe import _versions, recipe_spec
from paretune.trial import run_trial

__all__ = ["Materialized", "materialize"]


@dataclass(frozen=True)
class Materialized:
    directory: Path
    recorded: dict[str, float]
    measured: dict[str, float]
    data_fingerprint: str
    adapter: bool


def materialize(
    recipe: Mapping[str, Any], out_dir: str | Path, *, device: str = "auto",
    cache_dir: str | None = None, progress: bool = False,
) -> Materialized:
    """Rebuild the recipe's model into ``out_dir`` (new or empty) and write its model card."""
    import yaml

    from paretune import data

    spec = recipe_spec(recipe, device, cache_dir, progress)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {str(out)!r} must be a new or empty directory, so that size_mb "
                          "counts only the model; choose another path.")
    out.mkdir(parents=True, exist_ok=True)
    result = run_trial(spec, artifact_dir=str(out))
    if result.state != "complete":
        raise TrialFailed(f"rebuilding trial {spec.number} failed: {result.error}")
    dataset = data.load_task_data(spec.context["task"], int(spec.context["seed"]))
    _name_labels(out, dataset.label_names)
    done = Materialized(
        directory=out,
        recorded={k: float(v) for k, v in dict(recipe.get("metrics", {})).items()},
        measured=dict(result.metrics),
        data_fingerprint=dataset.fingerprint,
        adapter=(out / "adapter" / "adapter_config.json").is_file(),
    )
    (out / "recipe.yaml").write_text(yaml.safe_dump(dict(recipe), sort_keys=False))
    (out / "README.md").write_text(model_card(recipe, done))
    return done


def _name_labels(out: Path, labels: list[str]) -> None:
    """The classifier's class ids get the dataset's label names (ids stay as trained)."""
    path = out / "config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if len(config.get("id2label", {})) != len(labels):
        return
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _load_code(directory: Path, task_type: str) -> str:
    """How to load this directory: plain transformers where it can, else paretune's loader
    (packed quantized weights, a head-pruned BERT, an adapter shipped beside its base)."""
    from paretune.spaces import _artifact, quant

    config = json.loads((directory / "config.json").read_text())
    plain = not (
        quant.is_quantized(directory)
        or (directory / _artifact.ADAPTER_DIR).is_dir()
        or config.get("model_type") == "paretune_bert"
    )
    tokenizer = 'tokenizer = AutoTokenizer.from_pretrained("PATH")'
    if not plain:
        return (
            "from transformers import AutoTokenizer\n\n"
            "from paretune.models import load_artifact  # pip install paretune\n\n"
            f'model = load_artifact("PATH")\n{tokenizer}'
        )
    auto = "AutoModelForSequenceClassification"
    if task_type == "causal_lm":
        auto = "AutoModelForCausalLM"
    return (
        f"from transformers import {auto}, AutoTokenizer\n\n"
        f'model = {auto}.from_pretrained("PATH")\n{tokenizer}'
    )


def model_card(recipe: Mapping[str, Any], done: Materialized) -> str:
    """README.md: what the model is, how it was made, what it measured, how to load it."""
    import yaml

    study, number = recipe.get("study", "?"), recipe.get("trial", "?")
    task, model = recipe.get("task", {}), recipe.get("model", {})
    objectives = dict(recipe.get("objectives", {}))
    names = [*objectives, *[m for m in done.measured if m not in objectives]]
    metric_rows = [
        [
            f"{m}" + (f" ({objectives[m]})" if m in objectives else ""),
            _fmt(done.recorded[m]) if m in done.recorded else "-",
            _fmt(done.measured[m]) if m in done.measured else "-",
        ]
        for m in names
    ]
    here = _versions()
    then = dict(recipe.get("versions", {}))
    version_rows = [[k, then.get(k, "-"), here.get(k, "-")] for k in sorted({*here, *then})]
    files = sorted(p for p in done.directory.rglob("*") if p.is_file())
    file_rows = [[f"`{p.relative_to(done.directory)}`", f"{p.stat().st_size:,}"] for p in files]
    load = _load_code(done.directory, str(task.get("type", "classification")))
    params = yaml.safe_dump(dict(recipe.get("params", {})), sort_keys=True).rstrip()
    return f"""---
library_name: {"peft" if done.adapter else "transformers"}
pipeline_tag: text-classification
tags: [paretune]
---

# {study}, trial {number}

Materialized by paretune from the recipe of trial {number} of study `{study}`: base model
`{model.get("name", "?")}`, fine-tuned and compressed for `{task.get("type", "?")}` on
`{task.get("dataset", "?")}` with the knobs below, rebuilt here exactly as the trial ran
(same stages, same seed {recipe.get("seed", "?")}, same data split).

## Load

```python
{load}
```

## Metrics

*Recorded*: measured by the trial during the search. *Re-measured*: measured again on the
model in this directory, on the device it was rebuilt on (latency and times depend on it).

{_table(metric_rows, ["metric", "recorded", "re-measured"])}

## Recipe

```yaml
{params}
```

The whole recipe is in `recipe.yaml`; `paretune materialize recipe.yaml -o DIR` rebuilds
this directory and `paretune run recipe.yaml` replays the trial.

## Data

- dataset: `{task.get("dataset", "?")}` (text column `{task.get("text_column", "text")}`,
  label column `{task.get("label_column", "label")}`, eval split `{task.get("eval_split", "?")}`)
- data fingerprint: `{done.data_fingerprint}` (hash of the train and eval rows and labels)

## Library versions

{_table(version_rows, ["library", "at export", "materialized with"])}

## Files

{_table(file_rows, ["file", "bytes"])}
"""
