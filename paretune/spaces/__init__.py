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
from paretune.spaces import train  # noqa: E402,F401  (registration order matters)
from paretune.spaces import peft  # noqa: E402,F401
from paretune.spaces import lora  # noqa: E402,F401

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
