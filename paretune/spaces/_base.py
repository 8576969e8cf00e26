"""Knobs, stages and the family registry: what every method family declares."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from paretune.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "Choice",
    "Family",
    "SpaceInfo",
    "Switch",
    "FamilyConfig",
    "Fixed",
    "Float",
    "Int",
    "Knob",
    "Stage",
    "TrialContext",
    "families",
    "get_family",
    "knob_names",
    "register_family",
    "resolve",
]


class Stage(enum.IntEnum):
    """Order in which families act inside one trial (see DESIGN.md, Stages)."""

    ARCH = 0
    PRUNE = 1
    QUANT_TRAIN = 2
    ADAPT = 3
    TRAIN = 4
    COMPRESS = 5


@dataclass(frozen=True)
class Float:
    """A float range; ``log`` samples on a log scale, ``step`` discretizes it."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def check(self, name: str) -> None:
        if not self.low <= self.high:
            raise ConfigError(
                f"`low <= high` must hold for {name}, but got (low={self.low}, high={self.high})."
            )
        if self.log and self.low <= 0:
            raise ConfigError(
                f"`low > 0` must hold for {name} with log: true, but got low={self.low}; "
                "raise low or set log: false."
            )
        if self.log and self.step is not None:
            raise ConfigError(f"{name} cannot have both log: true and a step; drop one.")
        if self.step is not None and self.step <= 0:
            raise ConfigError(f"`step > 0` must hold for {name}, but got step={self.step}.")

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        value = trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        # a value on a step is low + k x step: 0.30000000000000004 is recorded as 0.3
        return value if self.step is None else round(value, 12)

    def grid(self) -> list[Any] | None:
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def endpoints(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Int:
    """An integer range; ``log`` samples on a log scale, ``step`` strides it."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def check(self, name: str) -> None:
        for key in ("low", "high", "step"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name}.{key} must be an integer, but got {value!r}.")
        Float(self.low, self.high, self.log, None if self.step == 1 else self.step).check(name)

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Any] | None:
        return list(range(self.low, self.high + 1, self.step))

    def endpoints(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True, init=False)
class Choice:
    """A categorical knob: one of ``choices``."""

    choices: tuple[Any, ...]

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", tuple(choices))

    def check(self, name: str) -> None:
        if not self.choices:
            raise ConfigError(f"{name} needs at least one choice, but got an empty list.")
        for c in self.choices:
            if not isinstance(c, (str, int, float, bool)) and c is not None:
                raise ConfigError(
                    f"choices of {name} must be strings or numbers, but got {c!r}."
                )

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if len(self.choices) == 1:
            return self.choices[0]
        return trial.suggest_categorical(name, list(self.choices))

    def grid(self) -> list[Any] | None:
        return list(self.choices)

    def endpoints(self) -> list[Any]:
        return list(self.choices)


@dataclass(frozen=True)
class Fixed:
    """A knob the config pins to one value: not searched, still recorded in every trial."""

    value: Any

    def check(self, name: str) -> None:
        Choice(self.value).check(name)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return self.value

    def grid(self) -> list[Any] | None:
        return [self.value]

    def endpoints(self) -> list[Any]:
        return [self.value]


@dataclass(frozen=True)
class Switch:
    """A default range that moves with an earlier knob's value, e.g. the learning rate with
    ``peft.method``: a full fine-tune and a LoRA adapter want rates an order of magnitude
    apart. Optuna sees one parameter whose range depends on the branch (allowed for float
    and int ranges; every case must agree on ``log``). Cases may themselves be switches.
    """

    on: str
    cases: Mapping[Any, Any]
    default: Any

    def pick(self, params: Mapping[str, Any]) -> Any:
        """The plain range for these params (nested switches resolved)."""
        spec = self.cases.get(params.get(self.on), self.default)
        return spec.pick(params) if isinstance(spec, Switch) else spec

    def leaves(self) -> list[Any]:
        out = []
        for spec in [*self.cases.values(), self.default]:
            out += spec.leaves() if isinstance(spec, Switch) else [spec]
        return out

    def check(self, name: str) -> None:
        leaves = self.leaves()
        for spec in leaves:
            if not isinstance(spec, (Float, Int)):
                raise ValueError(f"{name}: a Switch holds Float or Int ranges, not {spec!r}.")
            spec.check(name)
        if len({(type(s), s.log) for s in leaves}) > 1:
            raise ValueError(f"{name}: every case of a Switch must have the same type and log.")

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        raise TypeError("resolve(spec, params) a Switch before suggesting it")

    def grid(self) -> list[Any] | None:
        return None  # resolved per branch by grid_points

    def endpoints(self) -> list[Any]:
        return [v for spec in self.leaves() for v in spec.endpoints()]


Knob = Union[Float, Int, Choice, Fixed, Switch]  # noqa: UP007  (a runtime alias on 3.10)


def resolve(spec: Knob, params: Mapping[str, Any]) -> Knob:
    """The plain range ``spec`` stands for, given the knobs chosen so far."""
    return spec.pick(params) if isinstance(spec, Switch) else spec


@dataclass(frozen=True)
class SpaceInfo:
    """What the space is built for, known in the driver before the first trial: the base
    model's shape (from its config alone, no weights), the task, the device trials run on,
    and the study's objectives. Families shape their knobs from it (``register_family``'s
    ``shape``) and check user-fixed values against it (``check``)."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    task_type: str = "classification"
    device: str = "cpu"  # "cpu" or "cuda": where trials train
    # "cpu" or "cuda": where the artifact is served and its latency measured (measure.device)
    measure_device: str = "cpu"
    bf16: bool = True  # the device trains under bf16 autocast
    objectives: tuple[str, ...] = ("accuracy", "size_mb")
    prefix_tuning: bool = True  # the model takes past_key_values (prefix / P-tuning)
    # the tokenizer's model: "wordpiece", "bpe", "unigram", "wordlevel"; "slow" where there
    # is no fast (tokenizers) backend, "" where it is not known
    tokenizer: str = ""


@dataclass(frozen=True)
class FamilyConfig:
    """Base of every family's config dataclass: one field per knob, validated on creation."""

    @classmethod
    def from_params(cls, family: str, params: Mapping[str, Any]) -> FamilyConfig:
        prefix = family + "."
        kwargs = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        return cls(**kwargs)


@dataclass
class TrialContext:
    """What a family's apply function may read and write while a trial runs.

    Families never call each other; they talk through the model they transform and this
    context (e.g. the distill family leaves a loss term here that the train loop adds).
    """

    params: dict[str, Any]
    device: str
    seed: int
    tokenizer: Any
    train_data: Any
    eval_data: Any
    task: Mapping[str, Any]
    model_spec: Mapping[str, Any]
    cache_dir: str
    data_fingerprint: str = ""
    label_names: tuple[str, ...] = ()  # the classes, in the order of their ids
    stats: dict[str, float] = field(default_factory=dict)
    loss_terms: list[Callable[..., Any]] = field(default_factory=list)
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
    # called as hook(model, steps done, total steps) after each epoch but the last: early
    # stopping measures quality there
    eval_hooks: list[Callable[[Any, int, int], None]] = field(default_factory=list)
    # the saved format the artifact is written in (``paretune.spaces._artifact``) and its
    # options: a family that changes how the model is saved names its format here
    saved_format: str = "transformers"
    save_options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    info: SpaceInfo | None = None  # the loaded base model's shape and the trial's device
    # tokenize(tokenizer) -> (train, eval): the task's splits under a tokenizer, cached as the
    # trial's own are (the base model's tokenizer gives ``train_data`` and ``eval_data``)
    tokenize: Callable[[Any], tuple[Any, Any]] | None = None
    # the base model's id of each token a trimmed vocabulary kept, in the order of the new
    # ids (a LongTensor); None while the vocabulary is the base model's. What still runs on
    # the base vocabulary (the distillation teacher) reads the trial's ids through it.
    kept_ids: Any = None
    # what the artifact is beyond its knobs (name -> one line): shown on its model card
    notes: dict[str, str] = field(default_factory=dict)

    def set_vocabulary(self, tokenizer: Any, kept_ids: Any) -> None:
        """Ship ``tokenizer`` (a trimmed vocabulary, ``kept_ids`` its base ids) instead of the
        base model's: the train and eval splits are tokenized again with it, so that training
        and measuring see the ids the shipped tokenizer gives."""
        if self.tokenize is None:
            raise TypeError("set_vocabulary needs the context's tokenize function")
        base, base_tokenizer = self.eval_data, self.tokenizer
        self.train_data, self.eval_data = self.tokenize(tokenizer)
        self.tokenizer, self.kept_ids = tokenizer, kept_ids
        if base.labels.dim() == 2:  # a causal LM: its loss per token of the base tokenizer
            from paretune.data import loss_scale

            self.eval_data.loss_scale = loss_scale(base, base_tokenizer, self.eval_data,
                                                   tokenizer)


class Shaped(dict):  # type: ignore[type-arg]
    """A shape's ranges with one line on the choices this model cannot run, which the space
    leaves out (shown with the families left out before the study starts)."""

    def __init__(self, ranges: Mapping[str, Any], note: str = "") -> None:
        super().__init__(ranges)
        self.note = note


ApplyFn = Callable[[Any, Any, TrialContext], Any]  # (model, the family's config, ctx) -> model
# (info) -> the family's default ranges for this model and device (only those that change;
# a Shaped says which choices the model cannot run), or a one-line reason why the family
# cannot apply to this model at all
ShapeFn = Callable[[SpaceInfo], Union[Mapping[str, Knob], str]]  # noqa: UP007
# (config, info) -> None; raises ConfigError for a value that cannot run on this model/device
CheckFn = Callable[[Any, SpaceInfo], None]
# (params, info) -> the family's knobs (short names) that change nothing for these params on
# this model, e.g. which layers are kept when all of them are
InertFn = Callable[[Mapping[str, Any], SpaceInfo], Iterable[str]]


@dataclass(frozen=True)
class Family:
    """A registered method family: its knobs, config, and what it does at which stage."""

    name: str
    config_cls: type[FamilyConfig]
    hooks: Mapping[Stage, ApplyFn]
    knobs: Mapping[str, Knob]
    when: Mapping[str, tuple[Any, ...]]
    doc: str
    knob_when: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    shape: ShapeFn | None = None
    check: CheckFn | None = None
    inert: InertFn | None = None

    def is_active(self, params: Mapping[str, Any]) -> bool:
        """True when every knob this family depends on has one of the listed values."""
        return _holds(self.when, params)

    def knob_active(self, knob: str, params: Mapping[str, Any]) -> bool:
        """True when ``knob`` applies given the knobs chosen so far (its own condition, e.g.
        distill.temperature only when distill.enabled); otherwise its default is used."""
        return _holds(self.knob_when.get(knob, {}), params)

    def config(self, params: Mapping[str, Any]) -> FamilyConfig:
        return self.config_cls.from_params(self.name, params)


def same_model(params: Mapping[str, Any], info: SpaceInfo | None) -> dict[str, Any]:
    """``params`` without the knobs that change nothing for them on the model of ``info``
    (each family's ``inert``): two points equal here train and measure the same model."""
    if info is None:
        return dict(params)
    drop = {f"{f.name}.{knob}" for f in _REGISTRY.values() if f.inert and f.is_active(params)
            for knob in f.inert(params, info)}
    return {k: v for k, v in params.items() if k not in drop}


def _holds(cond: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    return all(
        k in params and (test(params[k]) if callable(test) else params[k] in test)
        for k, test in cond.items()
    )


def _as_condition(when: Mapping[str, Any] | None) -> dict[str, Any]:
    """Each condition: a tuple of allowed values, or a predicate on the value."""
    return {
        k: v if callable(v) else tuple(v) if isinstance(v, (list, tuple)) else (v,)
        for k, v in (when or {}).items()
    }


_REGISTRY: dict[str, Family] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_family(
    name: str,
    config_cls: type[FamilyConfig],
    apply: ApplyFn | None,
    *,
    stage: Stage,
    knobs: Mapping[str, Knob],
    when: Mapping[str, Any] | None = None,
    knob_when: Mapping[str, Mapping[str, Any]] | None = None,
    compress: ApplyFn | None = None,
    shape: ShapeFn | None = None,
    check: CheckFn | None = None,
    inert: InertFn | None = None,
) -> Family:
    """Add a method family to the joint space.

    Args:
        name: lower-case unique namespace of the family's knobs (``lora`` -> ``lora.r``).
        config_cls: frozen dataclass with one field (and default) per knob.
        apply: called at ``stage`` as ``apply(model, cfg, ctx) -> model``.
        stage: when ``apply`` runs.
        knobs: default search range of each knob.
        when: the family is active only if each named knob (of a family registered
            earlier) takes one of the listed values, e.g. ``{"peft.method": ("lora",)}``.
        knob_when: per-knob conditions on knobs declared before it (this family's earlier
            knobs included): allowed values or a predicate, e.g.
            ``{"temperature": {"distill.enabled": True}}`` or
            ``{"scheme": {"prune.ratio": lambda r: r > 0}}``; a knob whose condition fails is
            not suggested and keeps its config default.
        compress: optional second hook, run at ``Stage.COMPRESS`` after training.
        shape: builds the family's default ranges for the model and device before the study
            (cap ranges, drop choices that cannot run there), or says why the family cannot
            apply to this model: it then leaves the space and its knobs keep their defaults.
        check: guards a value the user fixed (and every trial, against the model it
            loaded): raises ConfigError naming the rule, e.g. more layers than the model has.
        inert: names the knobs that change nothing for given params on the model, so that
            two points that differ only in them count as the same model (the twin check).
    """
    if not _NAME.match(name):
        raise ValueError(f"family name must match {_NAME.pattern}, but got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(f"family {name!r} is registered already.")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for knob, spec in knobs.items():
        if knob not in fields:
            raise ValueError(f"knob {name}.{knob} is not a field of {config_cls.__name__}.")
        spec.check(f"{name}.{knob}")
    cond = _as_condition(when)
    known = set(knob_names())
    for k in cond:
        if k not in known:
            raise ValueError(
                f"family {name!r} depends on {k!r}, which no earlier family declares."
            )
    per_knob = {}
    for knob, kw in (knob_when or {}).items():
        if knob not in knobs:
            raise ValueError(f"knob_when names {name}.{knob}, which is not a knob of {name!r}.")
        earlier = known | {f"{name}.{k}" for k in list(knobs)[: list(knobs).index(knob)]}
        for k in kw:
            if k not in earlier:
                raise ValueError(
                    f"{name}.{knob} depends on {k!r}, which is not declared before it."
                )
        per_knob[knob] = _as_condition(kw)
    hooks: dict[Stage, ApplyFn] = {}
    if apply is not None:
        hooks[stage] = apply
    if compress is not None:
        hooks[Stage.COMPRESS] = compress
    doc = (config_cls.__doc__ or "").strip()
    family = Family(name, config_cls, hooks, dict(knobs), cond, doc, per_knob, shape, check,
                    inert)
    _REGISTRY[name] = family
    return family


def families() -> list[Family]:
    """Every registered family, in registration order (conditions point backwards)."""
    return list(_REGISTRY.values())


def get_family(name: str) -> Family:
    return _REGISTRY[name]


def knob_names() -> dict[str, Knob]:
    """``{"family.knob": default_spec}`` for every registered knob."""
    return {f"{f.name}.{k}": spec for f in _REGISTRY.values() for k, spec in f.knobs.items()}
