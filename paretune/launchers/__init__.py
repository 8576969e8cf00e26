"""Where trials run. Adding a launcher is one module plus one line in ``LAUNCHERS``."""

from __future__ import annotations

import importlib
from typing import Any

from paretune.launchers._base import BaseLauncher, TrialFn

# launcher.type -> "module:Class", imported only when chosen
LAUNCHERS = {
    "local": "paretune.launchers.local:LocalLauncher",
    "multiprocess": "paretune.launchers.multiprocess:MultiprocessLauncher",
    "ray": "paretune.launchers.ray:RayLauncher",
}


def make_launcher(kind: str, **options: Any) -> BaseLauncher:
    module, _, cls = LAUNCHERS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)  # type: ignore[no-any-return]


__all__ = ["BaseLauncher", "LAUNCHERS", "TrialFn", "make_launcher"]
