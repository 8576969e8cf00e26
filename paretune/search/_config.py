"""Study config: YAML plus ``key=value`` overrides -> validated config objects.

Every user error is found here, before any model is loaded or any trial is written.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError

__all__ = ["Config", "SAMPLERS", "load_config", "parse_config", "read_yaml"]

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random", "grid")
TASK_TYPES = ("classification", "causal_lm")
DEFAULT_OBJECTIVES = {
    "classification": {"accuracy": "maximize", "size_mb": "minimize"},
    "causal_lm": {"perplexity": "minimize", "size_mb": "minimize"},
}
LAUNCHERS = ("local", "multiprocess", "ray")
# launcher.type -> the keyword arguments its class takes (LauncherSection.options)
LAUNCHER_KEYS: dict[str, tuple[str, ...]] = {
    "local": (),
    "multiprocess": ("max_concurrent", "retries", "workers", "device"),
    "ray": ("max_concurrent", "retries", "address", "gpus_per_trial", "cpus_per_trial", "device"),
}
_CONSTRAINT = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=)\s*(-?[0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class StudySection:
    name: str = "paretune"
    storage: str = "sqlite:///paretune.db"
    sampler: str = "tpe"
    n_trials: int = 20
    seed: int = 0
    objectives: Any = None  # default: DEFAULT_OBJECTIVES of the task type
    constraints: list[str] = field(default_factory=list)
    cache_dir: str = "~/.cache/paretune"
    # hypervolume reference point, objective -> value; None derives it from the trials
    reference_point: dict[str, float] | None = None


@dataclass(frozen=True)
class ModelSection:
    name: str = "minilm"
    max_length: int = 128


@dataclass(frozen=True)
class TaskSection:
    type: str = "classification"
    dataset: str = "bbc"
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str | None = None
    eval_split: float | str = 0.2
    max_train_rows: int | None = None
    max_eval_rows: int | None = None


@dataclass(frozen=True)
class LauncherSection:
    """Where trials run. ``None`` means "the launcher decides" (see ``LAUNCHER_KEYS``)."""

    type: str = "local"
    device: str = "auto"
    max_concurrent: int | None = None  # local: 1; multiprocess: workers; ray: what fits
    retries: int = 0  # re-runs of a trial whose worker died (multiprocess, ray)
    workers: int | None = None  # multiprocess: worker processes (default: one per GPU, else 1)
    address: str | None = None  # ray: None starts a local Ray; "auto" or "ray://host:port"
    gpus_per_trial: float | None = None  # ray: fractional packs trials (default: 1 with GPUs)
    cpus_per_trial: float = 1.0  # ray

    def options(self) -> dict[str, Any]:
        """Keyword arguments of this launcher type's class (``make_launcher``)."""
        return {key: getattr(self, key) for key in LAUNCHER_KEYS[self.type]}


@dataclass(frozen=True)
class MeasureSection:
    latency_batch_size: int = 16
    latency_warmup: int = 2
    latency_repeats: int = 10


@dataclass(frozen=True)
class Config:
    study: StudySection
    model: ModelSection
    task: TaskSection
    space: dict[str, Any]  # knob name -> Float | Int | Choice | Fixed
    launcher: LauncherSection
    measure: MeasureSection

    def directions(self) -> list[str]:
        return list(self.study.objectives.values())

    def context(self) -> dict[str, Any]:
        """Study-wide settings every trial needs; plain data, so specs pickle."""
        return {
            "model": dataclasses.asdict(self.model),
            "task": dataclasses.asdict(self.task),
            "measure": dataclasses.asdict(self.measure),
            "seed": self.study.seed,
            "device": self.launcher.device,
            "cache_dir": str(Path(self.study.cache_dir).expanduser()),
        }

    def reference_point(self) -> list[float] | None:
        """``study.reference_point`` in objective order, or None (derived from the trials)."""
        ref = self.study.reference_point
        return None if ref is None else [float(ref[name]) for name in self.study.objectives]

    def constraint_bounds(self) -> list[tuple[str, str, float]]:
        """``[(metric, op, bound)]``; Optuna's convention: value <= 0 is feasible."""
        out = []
        for text in self.study.constraints:
            m = _CONSTRAINT.match(text)
            assert m is not None  # checked in parse_config
            out.append((m.group(1), m.group(2), float(m.group(3))))
        return out


_SECTIONS: dict[str, type] = {
    "study": StudySection,
    "model": ModelSection,
    "task": TaskSection,
    "launcher": LauncherSection,
    "measure": MeasureSection,
}


def _unknown(kind: str, key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else f" Known: {', '.join(sorted(known))}."
    return ConfigError(f"unknown {kind} {key!r}.{hint}")


def read_yaml(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} does not exist; give the path of a YAML file.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"config file {path!r} is malformed YAML{where}: {problem}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of sections, not {data!r}.")
    return data


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``study.n_trials=4``, ``space.train.lr=0.001``, ``space.peft.method=[none,lora]``."""
    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} must look like key=value, e.g. study.n_trials=4."
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r} has a value that is not valid YAML.") from None
        section, _, rest = key.partition(".")
        if not rest:
            raise ConfigError(
                f"override {item!r} must name a key inside a section, e.g. study.seed."
            )
        node = out.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: section {section!r} is not a mapping.")
        if section == "space":  # knob names themselves contain dots
            node[rest] = value
            continue
        *parents, leaf = rest.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(
    path: str | dict[str, Any] | None, overrides: Sequence[str] = (), *, check_data: bool = True
) -> Config:
    """A validated config from a YAML path (or its already-read mapping) plus overrides."""
    raw = read_yaml(path) if isinstance(path, str) else (path or {})
    return parse_config(apply_overrides(raw, overrides), check_data=check_data)


def _section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if raw is None:
        raw = {}
    if isinstance(raw, str) and name == "model":
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"section {name!r} must be a mapping, but got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise _unknown(f"key in section {name!r}:", key, list(fields))
    return cls(**raw)


def _check_type(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{key} must be {what}, but got {value!r}.")


def parse_config(raw: Mapping[str, Any], *, check_data: bool = True) -> Config:
    from paretune import models

    for key in raw:
        if key not in _SECTIONS and key != "space":
            raise _unknown("config section", key, [*_SECTIONS, "space"])
    sections = {name: _section(name, raw.get(name)) for name in _SECTIONS}
    study, model, task = sections["study"], sections["model"], sections["task"]
    launcher, measure = sections["launcher"], sections["measure"]

    _check_type("study.name", study.name, str, "a string")
    _check_type("study.n_trials", study.n_trials, int, "a positive integer")
    if study.n_trials < 1:
        raise ConfigError(f"study.n_trials must be a positive integer, but got {study.n_trials}.")
    _check_type("study.seed", study.seed, int, "an integer")
    if study.sampler not in SAMPLERS:
        raise ConfigError(
            f"study.sampler must be one of {', '.join(SAMPLERS)}, but got {study.sampler!r}."
        )
    if task.type not in TASK_TYPES:
        raise ConfigError(
            f"task.type must be one of {', '.join(TASK_TYPES)}, but got {task.type!r}."
        )
    objectives = DEFAULT_OBJECTIVES[task.type] if study.objectives is None else study.objectives
    study = dataclasses.replace(study, objectives=_objectives(objectives, task.type))
    _constraints(study.constraints, task.type)
    study = dataclasses.replace(
        study, reference_point=_reference_point(study.reference_point, study.objectives)
    )
    split = task.eval_split
    if isinstance(split, float) and not 0.0 < split < 1.0:
        raise ConfigError(f"`0 < task.eval_split < 1` must hold for a fraction, but got {split}.")
    for key in ("max_train_rows", "max_eval_rows"):
        value = getattr(task, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"task.{key} must be a positive integer, but got {value!r}.")
    _check_type("model.name", model.name, str, "a string")
    _check_type("model.max_length", model.max_length, int, "a positive integer")
    models.check_model_name(model.name)

    _check_launcher(launcher)
    space = parse_space(raw.get("space") or {})
    cfg = Config(study, model, task, space, launcher, measure)
    if study.sampler == "grid":
        from paretune.search._space import grid_points

        grid_points(cfg)  # raises if a searched knob has no finite list of values
    if check_data:
        _check_columns(task)
    return cfg


def _check_launcher(launcher: LauncherSection) -> None:
    kind = launcher.type
    if kind not in LAUNCHERS:
        raise ConfigError(
            f"launcher.type must be one of {', '.join(LAUNCHERS)}, but got {kind!r}."
        )
    defaults = LauncherSection()
    for key in ("max_concurrent", "retries", "workers", "address", "gpus_per_trial",
                "cpus_per_trial"):
        value = getattr(launcher, key)
        if key == "max_concurrent" and value == 1:
            continue  # true of every launcher
        if key not in LAUNCHER_KEYS[kind] and value != getattr(defaults, key):
            users = [k for k, keys in LAUNCHER_KEYS.items() if key in keys]
            raise ConfigError(
                f"launcher.{key} applies to launcher.type {' or '.join(users)}, not {kind!r}; "
                f"remove launcher.{key} or set launcher.type: {users[0]}."
            )
    for key, low in (("max_concurrent", 1), ("workers", 1), ("retries", 0)):
        value = getattr(launcher, key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < low
        ):
            what = "a positive integer" if low else "an integer >= 0"
            raise ConfigError(f"launcher.{key} must be {what}, but got {value!r}.")
    for key in ("gpus_per_trial", "cpus_per_trial"):
        value = getattr(launcher, key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"launcher.{key} must be a number >= 0, but got {value!r}.")
        if value > 1 and value != int(value):
            raise ConfigError(
                f"launcher.{key} above 1 must be a whole number (Ray's rule), but got {value}; "
                f"use {int(value)} or {int(value) + 1}."
            )
    if kind == "ray":
        if launcher.cpus_per_trial == 0 and not launcher.gpus_per_trial:
            raise ConfigError(
                "launcher.cpus_per_trial and launcher.gpus_per_trial cannot both be 0 (every "
                "trial would fit anywhere, unbounded); set cpus_per_trial: 1."
            )
        address = launcher.address
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(
                f"launcher.address must be 'auto', 'ray://HOST:PORT' or HOST:PORT, but got "
                f"{address!r}; leave it unset to start a local Ray instance."
            )
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                "launcher.type 'ray' needs Ray, which is not installed: "
                "pip install 'paretune[ray]'"
            )


def _objectives(value: Any, task_type: str) -> dict[str, str]:
    from paretune import objectives

    known = {o.name: o for o in objectives.objectives(task_type)}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Sequence):
        value = {name: None for name in value}
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            "study.objectives must be a non-empty list of metric names or a mapping "
            f"name -> maximize|minimize, but got {value!r}."
        )
    out = {}
    for name, direction in value.items():
        if name not in known:
            raise _unknown(f"objective for task type {task_type!r}:", str(name), list(known))
        direction = direction or known[name].direction
        if direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"study.objectives.{name} must be maximize or minimize, but got {direction!r}."
            )
        out[name] = direction
    return out


def _reference_point(value: Any, objectives: Mapping[str, str]) -> dict[str, float] | None:
    """``{objective: value}`` for every objective, or a list in objective order."""
    if value is None:
        return None
    names = list(objectives)
    example = "{" + ", ".join(f"{n}: ..." for n in names) + "}"
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ConfigError(
                f"study.reference_point needs one value per objective ({', '.join(names)}), "
                f"but got {len(value)} values {list(value)}; or write it as {example}."
            )
        value = dict(zip(names, value))
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"study.reference_point must map each objective to a number, like {example}, "
            f"but got {value!r}."
        )
    for key in value:
        if key not in objectives:
            raise _unknown("objective in study.reference_point:", str(key), names)
    missing = [n for n in names if n not in value]
    if missing:
        raise ConfigError(
            f"study.reference_point needs a value for every objective, but {', '.join(missing)} "
            f"has none; write it as {example}."
        )
    out = {}
    for name in names:
        v = value[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(
                f"study.reference_point.{name} must be a finite number, but got {v!r}."
            )
        out[name] = float(v)
    return out


def _constraints(items: Any, task_type: str) -> None:
    from paretune import objectives

    known = [o.name for o in objectives.objectives(task_type)]
    if not isinstance(items, list):
        raise ConfigError(
            f"study.constraints must be a list like ['accuracy >= 0.9'], got {items!r}."
        )
    for text in items:
        m = _CONSTRAINT.match(str(text))
        if m is None:
            raise ConfigError(
                f"study.constraints entry {text!r} must look like 'METRIC >= NUMBER' or "
                "'METRIC <= NUMBER', e.g. 'accuracy >= 0.9'."
            )
        if m.group(1) not in known:
            raise _unknown("metric in study.constraints:", m.group(1), known)


def parse_space(raw: Any) -> dict[str, Any]:
    """``space`` section -> {knob: spec}. A scalar fixes a knob, a list gives choices,
    a mapping ``{low, high, log, step}`` narrows a range."""
    from paretune import spaces

    if not isinstance(raw, Mapping):
        raise ConfigError(f"section 'space' must map knob names to specs, but got {raw!r}.")
    known = spaces.knob_names()
    out: dict[str, Any] = {}
    for name, spec in raw.items():
        if name not in known:
            raise _unknown("knob", str(name), list(known))
        default = known[name]
        key = f"space.{name}"
        if isinstance(spec, Mapping):
            extra = set(spec) - {"low", "high", "log", "step"}
            if extra:
                raise ConfigError(
                    f"{key} has unknown range keys {sorted(extra)}; use low, high, log, step."
                )
            if isinstance(default, spaces.Choice):
                raise ConfigError(
                    f"{key} is a categorical knob (choices {list(default.choices)}); "
                    "give a value or a list of choices, not a range."
                )
            merged = {**dataclasses.asdict(default), **spec}
            if isinstance(default, spaces.Int):
                merged.setdefault("step", 1)
                merged["step"] = merged["step"] or 1
            knob: Any = type(default)(**merged)
        elif isinstance(spec, list):
            knob = spaces.Choice(*spec)
        else:
            knob = spaces.Fixed(spec)
        knob.check(key)
        _check_values(name, knob)
        out[name] = knob
    return out


def _check_values(name: str, knob: Any) -> None:
    """Every fixed value, choice and range endpoint must satisfy the family's own rules."""
    from paretune import spaces

    family_name, _, field_name = name.partition(".")
    family = spaces.get_family(family_name)
    for value in knob.endpoints():
        try:
            family.config_cls(**{field_name: value})
        except ConfigError as exc:
            raise ConfigError(f"space.{name}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(
                f"space.{name}: value {value!r} has the wrong type ({exc})."
            ) from None


def _check_columns(task: TaskSection) -> None:
    from paretune import data

    raw = dataclasses.asdict(task)
    columns = data.read_columns(raw)
    if columns is None:
        return
    for key, col in data.task_columns(raw).items():
        if col not in columns:
            raise ConfigError(
                f"task.{key} {col!r} is not a column of {task.dataset!r}; "
                f"its columns are {sorted(columns)}."
            )
