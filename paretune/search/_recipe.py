"""Reading a finished study: its front, picking a point, recipes to export and replay."""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretune.errors import ConfigError
from paretune.search._front import knee, pareto_front
from paretune.trial import TrialResult, TrialSpec, run_trial

if TYPE_CHECKING:
    import optuna

__all__ = [
    "RECIPE_KEY", "check_recipe_data", "front_trials", "is_recipe", "load_study", "make_recipe",
    "pick_trial", "recipe_spec", "replay_recipe",
]

RECIPE_KEY = "paretune_recipe"


def load_study(name: str, storage: str) -> optuna.Study:
    """The stored study, read-only: never creates a database file or a table; a missing
    file, a study that is not there or a storage that cannot be read is one line."""
    import optuna
    import sqlalchemy.exc

    from paretune.search._storage import describe, mask_url, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage, create=False, what="--storage")
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise ConfigError(
            f"--study {name!r} is not in storage {mask_url(storage)!r}; studies there: "
            f"{', '.join(names) or 'none'}."
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise ConfigError(
            f"--storage {mask_url(storage)!r} cannot be read: {describe(exc, storage)}"
        ) from None


def quality_index(study: optuna.Study) -> int:
    """Index of the study's first quality objective (accuracy, perplexity...), else 0."""
    from paretune.stopping import QUALITY

    names = list(study.user_attrs.get("paretune.objectives", {}))
    return next((i for i, name in enumerate(names) if name in QUALITY), 0)


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return bool(t.user_attrs.get("feasible", True))


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed, feasible, non-dominated trials, by trial number."""
    import optuna

    done = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if _feasible(t)
    ]
    directions = [d.name.lower() for d in study.directions]
    front = pareto_front(done, directions, key=lambda t: t.values)
    return sorted(front, key=lambda t: t.number)


def pick_trial(
    study: optuna.Study, trial: int | None = None, pick: str | None = None
) -> optuna.trial.FrozenTrial:
    """``trial`` by number, or ``pick``: ``knee`` of the front, or ``best:METRIC``."""
    import optuna

    if trial is not None:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches or matches[0].state != optuna.trial.TrialState.COMPLETE:
            raise ConfigError(f"--trial {trial} is not a completed trial of {study.study_name!r}.")
        return matches[0]
    front = front_trials(study)
    if not front:
        raise ConfigError(f"study {study.study_name!r} has no completed feasible trial to pick.")
    pick = pick or "knee"
    directions = [d.name.lower() for d in study.directions]
    if pick == "knee":  # ties go to the better quality
        return knee(  # type: ignore[no-any-return]
            front, directions, key=lambda t: t.values, prefer=quality_index(study)
        )
    if pick.startswith("best:"):
        metric = pick[5:]
        objectives = study.user_attrs.get("paretune.objectives", {})
        from paretune.objectives import get_objective

        try:
            direction = objectives.get(metric) or get_objective(metric).direction
        except KeyError:
            raise ConfigError(
                f"--pick {pick!r}: {metric!r} is not a metric of this study."
            ) from None
        import optuna as _o

        done = [
            t for t in study.get_trials(deepcopy=False, states=(_o.trial.TrialState.COMPLETE,))
            if _feasible(t) and metric in t.user_attrs
        ]
        sign = 1 if direction == "maximize" else -1
        return max(done, key=lambda t: sign * t.user_attrs[metric])
    raise ConfigError(f"--pick must be 'knee' or 'best:METRIC', but got {pick!r}.")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("paretune", "torch", "transformers", "peft", "optuna"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def make_recipe(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A self-contained description of one trial: enough to replay it anywhere."""
    from paretune.objectives import objectives

    context = study.user_attrs["paretune.context"]
    names = {o.name for o in objectives()}
    return {
        RECIPE_KEY: 1,
        "study": study.study_name,
        "trial": trial.number,
        "model": _absolute(context["model"], "name"),
        "task": _absolute(context["task"], "dataset", "eval_split"),
        "measure": context["measure"],
        "seed": context["seed"],
        # where the study cached its reference and data: a replay on the same machine
        # reuses them instead of fine-tuning the reference again
        "cache_dir": context.get("cache_dir"),
        "params": dict(trial.user_attrs.get("params", trial.params)),
        # the rows the study measured on (data.Dataset.fingerprint), to tell an edited file
        "data": study.user_attrs.get("paretune.data"),
        "objectives": study.user_attrs.get("paretune.objectives", {}),
        "metrics": {k: v for k, v in trial.user_attrs.items() if k in names},
        "versions": _versions(),
    }


def _absolute(section: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """``section`` with its local paths absolute. Studies store them absolute already
    (``parse_config``); a study created before that holds them relative to the directory it
    ran in, which is taken to be this one where the path exists here."""
    from paretune.data import BUILTIN_DATASETS
    from paretune.models import ALIASES

    out = dict(section)
    for key in keys:
        value = out.get(key)
        if not isinstance(value, str) or value in (*ALIASES, *BUILTIN_DATASETS):
            continue
        if not Path(value).is_absolute() and Path(value).exists():
            out[key] = str(Path(value).absolute())
    return out


def is_recipe(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw, Mapping) and RECIPE_KEY in raw


def recipe_spec(
    recipe: Mapping[str, Any], device: str = "auto", cache_dir: str | None = None,
    progress: bool = False,
) -> TrialSpec:
    """The recipe's trial as a ``TrialSpec``: same knobs, seed, model, task and measurement."""
    if not is_recipe(recipe):
        raise ConfigError(f"this is not a recipe (no {RECIPE_KEY!r} key); write one with "
                          "paretune export.")
    missing = [k for k in ("model", "task", "params", "seed") if k not in recipe]
    if missing:
        raise ConfigError(
            f"recipe is missing {', '.join(missing)}; export it with paretune export."
        )
    studied = recipe.get("cache_dir")  # the study's, used where it exists on this machine
    if cache_dir is None and isinstance(studied, str) and Path(studied).is_dir():
        cache_dir = studied
    context = {
        "model": recipe["model"], "task": recipe["task"], "measure": recipe.get("measure", {}),
        "seed": recipe["seed"], "device": device,
        "cache_dir": cache_dir or str(Path("~/.cache/paretune").expanduser()),
        "progress": progress,
    }
    return TrialSpec(int(recipe.get("trial", 0)), dict(recipe["params"]), context)


def check_recipe_data(recipe: Mapping[str, Any], spec: TrialSpec) -> Any:
    """The recipe's data, checked as a study's is (a file that moved is a ``ConfigError``,
    not a failed trial), with a warning where its rows are not those the study measured
    the trial on: what is measured now is then not what the recipe recorded."""
    from paretune import data

    dataset = data.check_task(spec.context["task"], int(spec.context["seed"]))
    recorded = recipe.get("data")
    if recorded and recorded != dataset.fingerprint:
        print(f"paretune: warning: the rows of task.dataset {spec.context['task']['dataset']!r}"
              f" are not those study {recipe.get('study')!r} measured trial "
              f"{recipe.get('trial')} on (the file changed since); what is measured now is "
              "measured on the rows as they are.", file=sys.stderr)
    return dataset


def replay_recipe(
    recipe: Mapping[str, Any], device: str = "auto", cache_dir: str | None = None
) -> TrialResult:
    """Run the recipe's trial again, as a single trial in this process, after its data is
    checked (``check_recipe_data``)."""
    spec = recipe_spec(recipe, device, cache_dir)
    check_recipe_data(recipe, spec)
    return run_trial(spec)
