"""Study config: YAML plus ``key=value`` overrides -> validated config objects.

Every user error is found here, before any model is loaded or any trial is written.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
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
    "multiprocess": ("max_concurrent", "retries", "workers", "device", "mps"),
    "ray": ("max_concurrent", "retries", "address", "gpus_per_trial", "cpus_per_trial", "device",
            "mps"),
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
    anchors: bool = True  # a new study starts with the plain fine-tune and compressions of it
    early_stopping: bool = True  # stop trials that cannot reach the front (PRUNED)
    # seconds between heartbeats of a running trial; a trial whose heartbeat is older than
    # grace_period is failed ("interrupted") by any driver of the study and replaced
    heartbeat_interval: int = 10
    grace_period: int = 60
    # seconds: after this long a run asks for no new trial, lets the running ones finish and
    # returns (re-run to go on); None runs until n_trials are finished
    timeout: float | None = None


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
    on_bad_rows: str = "drop"  # rows with an empty value, eval rows of unseen labels: or "error"


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
    mps: str = "auto"  # multiprocess, ray: CUDA MPS for trials packed on a GPU: auto | on | off

    def options(self) -> dict[str, Any]:
        """Keyword arguments of this launcher type's class (``make_launcher``)."""
        return {key: getattr(self, key) for key in LAUNCHER_KEYS[self.type]}


@dataclass(frozen=True)
class MeasureSection:
    latency_batch_size: int = 16
    latency_warmup: int = 3
    latency_repeats: int = 20
    device: str = "auto"  # where latency is measured and the artifact served: auto | cpu
    threads: int | None = None  # CPU threads while measuring on the CPU (None: torch's)
    exclusive: bool = True  # time while holding the device's lock (devicelock)
    cuda_graph: bool = True  # on a GPU, time replays of the pass captured as a CUDA graph


@dataclass(frozen=True)
class Config:
    study: StudySection
    model: ModelSection
    task: TaskSection
    # every knob -> Float | Int | Choice | Fixed | Switch: the config's own specs, and the
    # families' default ranges shaped for the model and device (search._space.build_space)
    space: dict[str, Any]
    launcher: LauncherSection
    measure: MeasureSection
    info: Any = None  # spaces.SpaceInfo the space was built for
    notes: tuple[str, ...] = ()  # one line per family left out of the space

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
            "objectives": list(self.study.objectives),
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
    if p.is_dir():
        raise ConfigError(f"config file {path!r} is a directory; give the path of a YAML file.")
    if not p.exists():
        raise ConfigError(f"config file {path!r} does not exist; give the path of a YAML file.")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise ConfigError(f"config file {path!r} cannot be read: {why or exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"config file {path!r} is malformed YAML{where}: {problem}.") from None
    if data is None:  # an empty file (or /dev/null) is a mistake, not the default study
        raise ConfigError(
            f"config file {path!r} is empty; write at least a study section (see "
            "examples/), or run `paretune demo` for the built-in study."
        )
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
    _check_type("study.anchors", study.anchors, bool, "true or false")
    _check_type("study.early_stopping", study.early_stopping, bool, "true or false")
    if study.timeout is not None and (isinstance(study.timeout, bool) or not isinstance(
            study.timeout, (int, float)) or study.timeout <= 0):
        raise ConfigError(f"study.timeout must be a positive number of seconds (or null for "
                          f"none), but got {study.timeout!r}.")
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
    task = _check_task(task, check_data)
    _check_type("model.name", model.name, str, "a string")
    models.check_model_name(model.name)
    if model.name not in models.ALIASES and Path(model.name).expanduser().is_dir():
        # absolute, so that a recipe replays and materializes from any directory
        model = dataclasses.replace(model, name=os.path.abspath(Path(model.name).expanduser()))
    _check_hub_model(model.name)  # before its config is read: a made-up id fails in seconds
    _check_max_length(model)
    _check_measure(measure)
    _check_heartbeat(study)

    _check_launcher(launcher)
    from paretune.search._space import build_space, grid_points

    info = models.space_info(model.name, task.type, launcher.device, tuple(study.objectives),
                             measure_device="cpu" if measure.device == "cpu" else None)
    space, notes = build_space(parse_space(raw.get("space") or {}), info)
    cfg = Config(study, model, task, space, launcher, measure, info, tuple(notes))
    if study.sampler == "grid":
        grid_points(cfg.space, info)  # raises if a searched knob has no finite list of values
    if check_data:
        from paretune import data

        data.check_task(dataclasses.asdict(task), study.seed)
        _check_cache_dir(study.cache_dir)
        _check_ray_address(launcher)
        _check_gpus(launcher)
    return cfg


# -- checks of the environment a study runs in: files, the hub, Ray, GPUs ---------------------


def _positive_int(key: str, value: Any, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{key} must be {what}, but got {value!r}.")


def _check_measure(measure: MeasureSection) -> None:
    _positive_int("measure.latency_batch_size", measure.latency_batch_size)
    _positive_int("measure.latency_warmup", measure.latency_warmup, low=0)
    _positive_int("measure.latency_repeats", measure.latency_repeats)
    if measure.device not in ("auto", "cpu"):
        raise ConfigError(f"measure.device must be auto (where trials run) or cpu, but got "
                          f"{measure.device!r}.")
    if measure.threads is not None:
        _positive_int("measure.threads", measure.threads)
    _check_type("measure.exclusive", measure.exclusive, bool, "true or false")
    _check_type("measure.cuda_graph", measure.cuda_graph, bool, "true or false")


def _check_heartbeat(study: StudySection) -> None:
    _positive_int("study.heartbeat_interval", study.heartbeat_interval)
    _positive_int("study.grace_period", study.grace_period)
    if study.grace_period <= study.heartbeat_interval:
        raise ConfigError(
            f"`study.grace_period > study.heartbeat_interval` must hold (a trial is failed "
            f"after missing heartbeats), but got grace_period={study.grace_period}, "
            f"heartbeat_interval={study.heartbeat_interval}."
        )


_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
# position ids start after the padding id (RoBERTa's 514 positions hold 512 tokens)
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert",
                            "data2vec-text", "longformer", "mpnet")


def _local_model_config(name: str) -> dict[str, Any] | None:
    """The model's config.json when it is on this machine (a directory, a non-GGUF alias,
    or the Hugging Face cache), without loading anything."""
    import json

    from paretune import models

    path: Path | None = None
    if name in models.ALIASES:
        if not models.ALIASES[name][1].endswith(".gguf"):
            path = Path(models.resolve(name)) / "config.json"
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser() / "config.json"
    else:
        cached = _hub_cached(name)
        path = Path(cached) if cached else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_max_length(model: ModelSection) -> None:
    _positive_int("model.max_length", model.max_length)
    config = _local_model_config(model.name) or {}
    limit = next((config[k] for k in _POSITIONS if isinstance(config.get(k), int)), None)
    why = "its max_position_embeddings"
    if limit is not None and config.get("model_type") in _POSITIONS_AFTER_PADDING:
        offset = int(config.get("pad_token_id") or 0) + 1
        limit -= offset
        why += f", less the {offset} its position ids skip"
    if limit is not None and model.max_length > limit:
        raise ConfigError(
            f"`model.max_length <= {limit}` must hold for {model.name!r} ({why}), but got "
            f"{model.max_length}."
        )


def _check_cache_dir(cache_dir: Any) -> None:
    """The cache directory exists and is writable, or can be created."""
    import os

    _check_type("study.cache_dir", cache_dir, str, "a directory path")
    path = Path(cache_dir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"study.cache_dir {cache_dir!r}: {str(existing)!r} is a file, not a directory."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"study.cache_dir {cache_dir!r}: {str(existing)!r} is not writable (read-only file "
            "system or no permission); point study.cache_dir at a writable directory."
        )


def _hub_cached(name: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001  (an id the hub library refuses is not cached)
        return None
    return found if isinstance(found, str) else None


HUB_TIMEOUT = 5.0


def _check_hub_model(name: str) -> None:
    """A hub id must be in the local Hugging Face cache or found on the hub within seconds."""
    import os
    import threading

    from paretune import models

    if name in models.ALIASES or Path(name).expanduser().exists() or _hub_cached(name):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    where = "is not in the local Hugging Face cache"
    if offline:
        raise ConfigError(f"model.name {name!r} {where} and HF_HUB_OFFLINE is set; download "
                          "it first or give a local directory.")
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            from huggingface_hub import model_info

            model_info(name, timeout=HUB_TIMEOUT)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            outcome.append(exc)

    thread = threading.Thread(target=lookup, daemon=True)  # DNS has no timeout of its own
    thread.start()
    thread.join(HUB_TIMEOUT + 1)
    error = outcome[0] if outcome else TimeoutError("no answer")
    if error is None:
        return
    kind = type(error).__name__
    if kind == "GatedRepoError":
        return  # it exists; access is the trial's business (and the token's)
    if kind in ("RepositoryNotFoundError", "HFValidationError"):
        raise ConfigError(
            f"model.name {name!r} is not a model on the Hugging Face hub (nor a local "
            f"directory or an alias: {', '.join(models.ALIASES)})."
        )
    raise ConfigError(
        f"model.name {name!r} {where}, and the hub cannot be reached to find it "
        f"({kind}); download it first (huggingface-cli download {name}) or give a local "
        "directory."
    )


def _check_ray_address(launcher: LauncherSection) -> None:
    if launcher.type == "ray" and launcher.address:
        from paretune.launchers.ray import check_address

        check_address(launcher.address)


def _check_gpus(launcher: LauncherSection) -> None:
    """GPUs asked for must be here (on a Ray cluster, Ray finds them on its nodes)."""
    device = str(launcher.device)
    wants = device.startswith("cuda") or (
        launcher.type == "ray" and not launcher.address and bool(launcher.gpus_per_trial)
    )
    if not wants or device == "cpu":
        return
    from paretune.launchers.multiprocess import visible_gpus

    gpus = visible_gpus()
    what = f"launcher.device {device!r}" if device.startswith("cuda") else (
        f"launcher.gpus_per_trial {launcher.gpus_per_trial}")
    if not gpus:
        raise ConfigError(f"{what} asks for a GPU, but this machine has none (no CUDA device "
                          "visible); set launcher.device: cpu.")
    index = device.partition(":")[2]
    if index.isdigit() and int(index) >= len(gpus):
        raise ConfigError(f"launcher.device {device!r}: this machine has {len(gpus)} GPU(s), "
                          f"cuda:0 to cuda:{len(gpus) - 1}.")


def _check_launcher(launcher: LauncherSection) -> None:
    kind = launcher.type
    if kind not in LAUNCHERS:
        raise ConfigError(
            f"launcher.type must be one of {', '.join(LAUNCHERS)}, but got {kind!r}."
        )
    defaults = LauncherSection()
    for key in ("max_concurrent", "retries", "workers", "address", "gpus_per_trial",
                "cpus_per_trial", "mps"):
        value = getattr(launcher, key)
        if key == "max_concurrent" and value == 1:
            continue  # true of every launcher
        if key not in LAUNCHER_KEYS[kind] and value != getattr(defaults, key):
            users = [k for k, keys in LAUNCHER_KEYS.items() if key in keys]
            raise ConfigError(
                f"launcher.{key} applies to launcher.type {' or '.join(users)}, not {kind!r}; "
                f"remove launcher.{key} or set launcher.type: {users[0]}."
            )
    from paretune.launchers._mps import mode_of

    mode_of(launcher.mps)  # auto, on or off (YAML's bare on / off are true / false)
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
                default = _numeric_range(key, default)
            if isinstance(default, spaces.Switch):  # one range for every branch: its envelope
                leaves = default.leaves()
                default = dataclasses.replace(
                    leaves[0], low=min(x.low for x in leaves), high=max(x.high for x in leaves)
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


def _numeric_range(key: str, default: Any) -> Any:
    """A numeric knob whose default is a list of values (``train.batch_size: [16, 32]``)
    still takes a range: an Int range over whole numbers, else a Float range."""
    from paretune import spaces

    values = default.choices
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(
            f"{key} is a categorical knob (choices {list(values)}); "
            "give a value or a list of choices, not a range."
        )
    if all(isinstance(v, int) for v in values):
        return spaces.Int(min(values), max(values))
    return spaces.Float(float(min(values)), float(max(values)))


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


def _check_task(task: TaskSection, check_data: bool) -> TaskSection:
    """The task section's own rules; local paths made absolute (checked to exist when the
    data is checked), so the study, its trials and its recipes read the same files from any
    directory. The rows themselves are checked by ``data.check_task``."""
    from paretune import data

    _check_type("task.dataset", task.dataset, str, "a string")
    for key in ("text_column", "label_column", "prompt_column"):
        value = getattr(task, key)
        if value is not None and (not isinstance(value, str) or not value):
            pairs = " (text pairs are not supported: join them into one column)" \
                if isinstance(value, list) else ""
            raise ConfigError(f"task.{key} must be one column name, but got {value!r}{pairs}.")
    split = task.eval_split
    if isinstance(split, bool) or not isinstance(split, (float, str)) or split == "":
        kind = " (an integer)" if isinstance(split, int) and not isinstance(split, bool) else ""
        raise ConfigError(
            f"task.eval_split must be a fraction between 0 and 1 (like 0.2), the path of a "
            f"file of eval rows, or a hub split name, but got {split!r}{kind}."
        )
    if isinstance(split, float) and not 0.0 < split < 1.0:
        raise ConfigError(f"`0 < task.eval_split < 1` must hold for a fraction, but got {split}.")
    for key in ("max_train_rows", "max_eval_rows"):
        value = getattr(task, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"task.{key} must be a positive integer, but got {value!r}.")
    if task.on_bad_rows not in data.ON_BAD_ROWS:
        raise ConfigError(
            f"task.on_bad_rows must be one of {', '.join(data.ON_BAD_ROWS)}, but got "
            f"{task.on_bad_rows!r}."
        )
    dataset = data.local_path(task.dataset, "task.dataset", must_exist=check_data)
    if isinstance(split, str):
        eval_file = data.local_path(split, "task.eval_split", must_exist=check_data)
        if eval_file is None and (dataset is not None or task.dataset in data.BUILTIN_DATASETS):
            raise ConfigError(
                f"task.eval_split {split!r} would be a split of a hub dataset, but "
                f"task.dataset {task.dataset!r} is not one; give a fraction like 0.2 or the "
                "path of a file of eval rows."
            )
        split = eval_file or split
    return dataclasses.replace(task, dataset=dataset or task.dataset, eval_split=split)
