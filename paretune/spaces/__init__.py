"""The joint search space: one module per method family, each registering itself.

Importing this package registers every built-in family, in the order their conditions need.
Adding a family is one module here plus one import line below.
"""

from __future__ import annotations

from paretune.spaces._base import (
    Choice,
    Family,
    FamilyConfig,
    Fixed,
    Float,
    Int,
    Knob,
    Stage,
    TrialContext,
    families,
    get_family,
    knob_names,
    register_family,
)

# isort: off
# Registration order is the order of hooks within a stage: distill adds its loss term before
# train's loop runs; at COMPRESS, peft merges, then prune re-applies its masks, then quant packs.
# Conditions point backwards: peft.method is declared before the adapters that depend on it.
from paretune.spaces import distill  # noqa: E402,F401
from paretune.spaces import train  # noqa: E402,F401
from paretune.spaces import peft  # noqa: E402,F401
from paretune.spaces import lora  # noqa: E402,F401
from paretune.spaces import adalora  # noqa: E402,F401
from paretune.spaces import prompt  # noqa: E402,F401
from paretune.spaces import arch  # noqa: E402,F401
from paretune.spaces import prune  # noqa: E402,F401
from paretune.spaces import quant  # noqa: E402,F401
# isort: on

__all__ = [
    "Choice",
    "Family",
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
]
