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
    Shaped,
    SpaceInfo,
    Stage,
    Switch,
    TrialContext,
    families,
    get_family,
    knob_names,
    register_family,
    resolve,
    same_model,
)

# isort: off
# Registration order is the order of hooks within a stage: at ARCH, vocab trims the
# embeddings before arch drops layers; at ADAPT, peft wraps the model before distill adds its
# loss term; at COMPRESS, peft merges, then prune re-applies its masks, then quant packs.
# Conditions point backwards: peft.method is declared before the adapters and the learning
# rate that depend on it, train.epochs before distill.
from paretune.spaces import peft  # noqa: E402,F401
from paretune.spaces import lora  # noqa: E402,F401
from paretune.spaces import adalora  # noqa: E402,F401
from paretune.spaces import prompt  # noqa: E402,F401
from paretune.spaces import train  # noqa: E402,F401
from paretune.spaces import distill  # noqa: E402,F401
from paretune.spaces import vocab  # noqa: E402,F401
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
    "Shaped",
    "SpaceInfo",
    "Stage",
    "Switch",
    "TrialContext",
    "families",
    "get_family",
    "knob_names",
    "register_family",
    "resolve",
    "same_model",
]
