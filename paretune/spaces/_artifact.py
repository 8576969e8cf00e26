"""Saved formats: every way paretune writes a model to disk, in one registry.

Each format declares how a directory in it is recognised (``detect``), written (``write``),
loaded into a runnable model (``load``), which runtime runs it and what the model card shows
to load it without paretune (``snippet``). Writing a trial's artifact, loading any artifact
(``paretune.models.load_artifact``), materializing and the tests are loops over
``formats()``; a family that needs another format registers one entry here (see
``paretune/spaces/_formats.py`` for the built-in ones) and names it in the trial's context
(``ctx.saved_format``, ``ctx.save_options``).

A format that a standard loader cannot read correctly must make that loader fail loudly
(an unknown quantization method, a missing weights file, a model type it does not know):
never load with random weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretune.errors import ParetuneError

__all__ = [
    "SaveRequest", "SavedFormat", "choose", "detect", "formats", "get_format", "load",
    "register_format", "write",
]


@dataclass(frozen=True)
class SaveRequest:
    """What a writer needs besides the model.

    format: the format the trial asked for (``ctx.saved_format``); a format that wraps
        another (an adapter beside its base) writes the base in it.
    task_type: ``classification`` or ``causal_lm``.
    options: the format's own settings, as the family that named it set them.
    example: a small tokenized batch (``input_ids``, ``attention_mask``; CPU tensors), for
        formats that trace the model (ONNX).
    device: where the artifact will run (``cpu`` or ``cuda``).
    """

    format: str = "transformers"
    task_type: str = "classification"
    options: Mapping[str, Any] = field(default_factory=dict)
    example: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"


@dataclass(frozen=True)
class SavedFormat:
    """One way of saving a model.

    name: lower-case unique name (``onnx``), recorded on every trial.
    doc: one line: what is stored and which runtime runs it.
    library: the model card's ``library_name`` (``transformers``, ``peft``, ``onnx``).
    detect(directory) -> bool: the directory holds this format.
    write(model, directory, request): save ``model`` (the writer may change or consume it).
    load(directory, device, threads) -> model: a runnable model, called as
        ``model(input_ids=..., attention_mask=...).logits``, in the runtime that ships it.
    snippet(directory, task_type, max_length) -> str: Python that loads the directory without
        paretune, as written: it defines ``tokenizer`` and ``logits(texts)`` (a NumPy array).
    runtime() -> str: the software that runs the format, with versions.
    claims(model, requested) -> bool: the format is what ``model`` must be saved in when a
        family asked for ``requested`` (an adapter that cannot merge, custom model code).
    """

    name: str
    doc: str
    library: str
    detect: Callable[[Path], bool]
    write: Callable[[Any, Path, SaveRequest], None]
    load: Callable[[Path, str, int | None], Any]
    snippet: Callable[[Path, str, int], str]
    runtime: Callable[[], str]
    claims: Callable[[Any, str], bool] | None = None


_REGISTRY: dict[str, SavedFormat] = {}
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def register_format(fmt: SavedFormat, *, before: str | None = None) -> SavedFormat:
    """Add a saved format. Registration order is detection order (the first format whose
    ``detect`` holds is the directory's): a format that is a special case of another (a
    trimmed vocabulary beside a plain transformers model, say) goes ``before`` it."""
    global _REGISTRY
    _builtins()
    if not _NAME.match(fmt.name):
        raise ValueError(f"format name must match {_NAME.pattern}, but got {fmt.name!r}.")
    if fmt.name in _REGISTRY:
        raise ValueError(f"saved format {fmt.name!r} is registered already.")
    if before is not None and before not in _REGISTRY:
        raise ValueError(f"register {fmt.name!r} before {before!r}, which is not registered.")
    items = list(_REGISTRY.items())
    at = len(items) if before is None else [k for k, _ in items].index(before)
    _REGISTRY = dict([*items[:at], (fmt.name, fmt), *items[at:]])
    return fmt


def formats() -> list[SavedFormat]:
    """Every registered format, in detection order."""
    _builtins()
    return list(_REGISTRY.values())


def get_format(name: str) -> SavedFormat:
    _builtins()
    return _REGISTRY[name]


def choose(model: Any, requested: str) -> SavedFormat:
    """The format ``model`` is saved in when the trial asked for ``requested``."""
    for fmt in formats():
        if fmt.claims is not None and fmt.claims(model, requested):
            return fmt
    return get_format(requested)


def detect(directory: str | os.PathLike[str]) -> SavedFormat:
    """The format of a directory paretune wrote."""
    path = Path(directory)
    for fmt in formats():
        if fmt.detect(path):
            return fmt
    raise ParetuneError(
        f"{str(path)!r} is not a model directory paretune wrote (known formats: "
        f"{', '.join(f.name for f in formats())})."
    )


def write(model: Any, directory: str | os.PathLike[str], fmt: SavedFormat,
          request: SaveRequest) -> None:
    """Save ``model`` in ``fmt``; files get ordinary permissions (rw-r--r-- under the usual
    umask), since some writers create them private."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    fmt.write(model, path, request)
    umask = os.umask(0)
    os.umask(umask)
    for p in [path, *path.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def load(directory: str | os.PathLike[str], device: str = "cpu",
         threads: int | None = None) -> Any:
    """Any directory paretune wrote, as a runnable model in the runtime that ships it."""
    return detect(directory).load(Path(directory), device, threads)


def _builtins() -> None:
    from paretune.spaces import _formats  # noqa: F401  (registers the built-in formats once)
