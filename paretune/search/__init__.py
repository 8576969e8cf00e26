"""The engine: study setup, the ask/tell loop, samplers, Pareto front, recipes."""

from __future__ import annotations

from paretune.search._config import Config, load_config, parse_config, read_yaml
from paretune.search._engine import open_study, run_study, tell_result
from paretune.search._front import dominates, knee, pareto_front
from paretune.search._recipe import (
    front_trials,
    is_recipe,
    load_study,
    make_recipe,
    pick_trial,
    replay_recipe,
)

__all__ = [
    "Config",
    "dominates",
    "front_trials",
    "is_recipe",
    "knee",
    "load_config",
    "load_study",
    "make_recipe",
    "open_study",
    "parse_config",
    "pareto_front",
    "pick_trial",
    "read_yaml",
    "replay_recipe",
    "run_study",
    "tell_result",
]
