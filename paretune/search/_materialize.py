"""Materialize a recipe: rebuild its model exactly as the trial did and save it to ship.

The trial runs again through ``run_trial(spec, artifact_dir=DIR)``: the same stages (train,
merge, compress), the same seed, the same saved format (``paretune.spaces._artifact``), and
every metric is measured again on the artifact as its runtime loads it from DIR. The
directory holds that artifact, its tokenizer, the recipe and a model card
(``huggingface_hub.ModelCard``) whose numbers, load code and metadata describe exactly it.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretune import data
from paretune.errors import ConfigError, TrialFailed
from paretune.search._recipe import _versions, check_recipe_data, recipe_spec
from paretune.trial import run_trial

__all__ = ["Materialized", "materialize"]


@dataclass(frozen=True)
class Materialized:
    directory: Path
    recorded: dict[str, float]
    measured: dict[str, float]
    data_fingerprint: str
    adapter: bool
    predicted: dict[str, int] | None = None  # eval predictions per class (classification)
    # the saved format, and where and with what software latency was measured
    notes: dict[str, str] = field(default_factory=dict)


def materialize(
    recipe: Mapping[str, Any], out_dir: str | Path, *, device: str = "auto",
    cache_dir: str | None = None, progress: bool = False,
) -> Materialized:
    """Rebuild the recipe's model into ``out_dir`` (new or empty) and write its model card."""
    import yaml

    spec = recipe_spec(recipe, device, cache_dir, progress)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {str(out)!r} must be a new or empty directory, so that size_mb "
                          "counts only the model; choose another path.")
    dataset = check_recipe_data(recipe, spec)
    # the top-most directory this call creates, removed again if it fails
    created = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = run_trial(spec, artifact_dir=str(out))
        if result.state != "complete":
            raise TrialFailed(f"rebuilding trial {spec.number} failed: {result.error}")
        _name_labels(out, dataset.label_names)
        done = Materialized(
            directory=out,
            recorded={k: float(v) for k, v in dict(recipe.get("metrics", {})).items()},
            measured=dict(result.metrics),
            data_fingerprint=dataset.fingerprint,
            adapter=result.notes.get("saved_format") == "adapter",
            predicted=_predicted_counts(out, spec, dataset),
            notes=dict(result.notes),
        )
        (out / "recipe.yaml").write_text(yaml.safe_dump(dict(recipe), sort_keys=False))
        from huggingface_hub import ModelCard

        ModelCard(model_card(recipe, done)).save(str(out / "README.md"))
    except BaseException:  # interrupted too: leave nothing half-written behind
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        else:
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise
    return done


def _predicted_counts(out: Path, spec: Any, dataset: data.Dataset) -> dict[str, int] | None:
    """Predictions per class of the model in ``out``, loaded as its card says, on the eval
    rows; None for a causal LM. A model that collapses onto a few classes shows here."""
    if not dataset.label_names:
        return None
    from transformers import AutoTokenizer

    from paretune.models import load_artifact
    from paretune.objectives.quality import predict
    from paretune.trial import pick_device

    device = pick_device(spec.context.get("device", "auto"))
    try:
        split = data.tokenize(
            AutoTokenizer.from_pretrained(out), dataset.eval_texts, dataset.eval_labels,
            int(spec.context["model"].get("max_length", 128)), f"{dataset.fingerprint}:eval",
            None,
        )
        from paretune.trial import serve_device

        where = serve_device(spec.context, device)
        preds = predict(load_artifact(out, where), split, where)
    except Exception as exc:  # the model is built and measured: the card says what is missing
        print(f"paretune: warning: the predictions per class of the model in {out} could not "
              f"be counted for its card: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return data.class_counts(preds.tolist(), dataset.label_names)


def _name_labels(out: Path, labels: list[str]) -> None:
    """The classifier's class ids get the dataset's label names (ids stay as trained), in
    every model config of the directory (an adapter's base has its own). transformers leaves
    a two-class config's default names out of config.json: those are named too."""
    for path in [out / "config.json", out / "base" / "config.json"]:
        if not labels or not path.is_file():  # a causal LM has no classes
            continue
        config = json.loads(path.read_text())
        if len(config.get("id2label") or {}) not in (0, len(labels)):
            continue
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def load_snippet(directory: Path, task_type: str, max_length: int) -> str:
    """Python that loads the model in ``directory`` without paretune, in the runtime that
    ships it, and uses it: ``predict(texts)`` (labels) for a classifier, the next token of
    a prompt for a causal LM. It runs as written."""
    from paretune.spaces import _artifact

    code = _artifact.detect(directory).snippet(directory, task_type, max_length)
    if task_type == "causal_lm":
        return code + '''

prompt = "The news today"
next_id = int(logits([prompt])[0, -1].argmax())
print(prompt + tokenizer.decode([next_id]))
'''
    return code + '''

id2label = config["id2label"]


def predict(texts):
    """The label of each text."""
    return [id2label[str(i)] for i in logits(texts).argmax(-1)]


print(predict(["A sentence to classify."]))
'''


def base_model_id(name: str) -> str | None:
    """The base model's hub id: the alias's source, a hub id itself, or what a local copy's
    config records (``_name_or_path``) when that is a hub id; else None."""
    from paretune import models

    if name in models.HUB_IDS:
        return models.HUB_IDS[name]
    local = Path(name).expanduser()
    if not local.exists():
        return name if _hub_like(name) else None
    try:
        recorded = json.loads((local / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, str) and _hub_like(recorded) else None


def _hub_like(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not Path(name).exists()


def _card_data(recipe: Mapping[str, Any], done: Materialized, library: str) -> Any:
    """The card's metadata: base model, dataset, metrics as model-index, pipeline, library."""
    from huggingface_hub import EvalResult, ModelCardData

    task, model = dict(recipe.get("task", {})), dict(recipe.get("model", {}))
    causal = task.get("type") == "causal_lm"
    dataset = str(task.get("dataset", "?"))
    hub_dataset = dataset if _hub_like(dataset) and dataset not in data.BUILTIN_DATASETS else None
    pipeline = "text-generation" if causal else "text-classification"
    name = f"{recipe.get('study', 'paretune')}-trial-{recipe.get('trial', '?')}"
    quality = ("perplexity", "eval_loss") if causal else ("accuracy", "macro_f1")
    results = [
        EvalResult(task_type=pipeline, dataset_type=hub_dataset or Path(dataset).name,
                   dataset_name=Path(dataset).name, dataset_split="eval",
                   metric_type=m, metric_value=round(done.measured[m], 6))
        for m in quality if m in done.measured
    ]
    return ModelCardData(
        base_model=base_model_id(str(model.get("name", ""))), datasets=hub_dataset,
        library_name=library, pipeline_tag=pipeline, model_name=name,
        eval_results=results or None,
        tags=["paretune", *[done.notes[k] for k in ("saved_format",) if k in done.notes]],
    )


def model_card(recipe: Mapping[str, Any], done: Materialized) -> str:
    """README.md: metadata (huggingface_hub's card data), what the model is, how it loads,
    what it measured (on this directory's artifact), how it was made."""
    import yaml

    from paretune.spaces import _artifact

    study, number = recipe.get("study", "?"), recipe.get("trial", "?")
    task, model = recipe.get("task", {}), recipe.get("model", {})
    task_type = str(task.get("type", "classification"))
    fmt = _artifact.detect(done.directory)
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
    files = sorted(p for p in done.directory.rglob("*") if p.is_file() and p.name != "README.md")
    file_rows = [[f"`{p.relative_to(done.directory)}`", f"{p.stat().st_size:,}"] for p in files]
    load = load_snippet(done.directory, task_type, int(model.get("max_length", 128)))
    params = yaml.safe_dump(dict(recipe.get("params", {})), sort_keys=True).rstrip()
    notes = done.notes
    card = _card_data(recipe, done, fmt.library)
    lock = "held" if notes.get("latency_lock") == "exclusive" else "not held"
    mode = ("each pass replayed as a CUDA graph (the GPU's time of its kernels; Python's "
            "launches left out)" if notes.get("latency_mode") == "cuda graph"
            else "each pass run eagerly, from its launch to its end")
    return f"""---
{card.to_yaml()}
---

# {study}, trial {number}

Materialized by paretune from the recipe of trial {number} of study `{study}`: base model
`{model.get("name", "?")}`, fine-tuned and compressed for `{task.get("type", "?")}` on
`{task.get("dataset", "?")}` with the knobs below, rebuilt here exactly as the trial ran
(same stages, same seed {recipe.get("seed", "?")}, same data split).
{_changes(notes)}
## Load

Saved format `{fmt.name}`: {fmt.doc}. It runs with {fmt.runtime()}; paretune is not needed:

```python
{load.rstrip()}
```

## Metrics

*Recorded*: measured by the trial during the search. *Re-measured*: measured again on the
artifact in this directory, loaded as above, on the device it was rebuilt on. Latency
(median of the timed batches; `latency_ms_iqr` is their interquartile range) was
re-measured on {notes.get("latency_device", "?")} with {notes.get("latency_runtime", "?")},
the device's timing lock {lock}, {mode}.

{_table(metric_rows, ["metric", "recorded", "re-measured"])}

## Recipe

```yaml
{params}
```

The whole recipe is in `recipe.yaml`; `paretune materialize recipe.yaml -o DIR` rebuilds
this directory and `paretune run recipe.yaml` replays the trial.

{data_section(recipe, done)}

## Library versions

{_table(version_rows, ["library", "at export", "materialized with"])}

## Files

{_table(file_rows, ["file", "bytes"])}
"""


# the notes every trial has: what its metrics were measured on (the card's Metrics section)
_MEASURE_NOTES = ("saved_format", "latency_device", "latency_runtime", "latency_lock",
                  "latency_mode")


def _changes(notes: Mapping[str, str]) -> str:
    """What the families say the model is beyond its knobs (a trimmed vocabulary's size and
    where its tokens came from), one line each."""
    lines = [f"- {k}: {v}" for k, v in notes.items() if k not in _MEASURE_NOTES]
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def data_section(recipe: Mapping[str, Any], done: Materialized) -> str:
    """The card's "Data" section: the dataset, and the eval set the metrics were measured on
    (where its rows came from, how many, per class, with the model's predictions per class)."""
    task, model = dict(recipe.get("task", {})), dict(recipe.get("model", {}))
    dataset = data.load_task_data(task, int(recipe.get("seed", 0)))
    columns = ", ".join(f"{k.removesuffix('_column')} column `{v}`"
                        for k, v in data.task_columns(task).items())
    lines = [
        "## Data",
        "",
        f"- dataset: `{task.get('dataset', '?')}` ({columns})",
        f"- training rows: {len(dataset.train_texts)}",
        f"- eval rows: {len(dataset.eval_texts)}, {dataset.eval_origin}",
        f"- max_length: {model.get('max_length', '?')} tokens (longer texts are truncated)",
        f"- data fingerprint: `{done.data_fingerprint}` (hash of the train and eval rows and "
        "labels)",
        *[f"- note: {note}" for note in dataset.notes],
    ]
    if dataset.label_names:
        counts = data.class_counts(dataset.eval_labels, dataset.label_names)
        predicted = done.predicted or {}
        rows = [[f"`{name}`", str(n), str(predicted.get(name, "-"))] for name, n in counts.items()]
        lines += ["", "The eval rows per class, and the predictions of this model on them:", "",
                  _table(rows, ["class", "eval rows", "predicted"])]
    return "\n".join(lines)
