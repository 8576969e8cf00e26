"""Multi-objective early stopping: a trial that cannot reach the front stops and is recorded
PRUNED, with the reason.

Optuna's pruners compare one objective's learning curves (optuna#3450); a Pareto search
needs a rule that looks at the front. The driver sends each trial a ``StopRule``: its quality
objective, the chance level of the task, and the front as it stood when the trial started.
The trial evaluates its quality after each epoch but the last and stops when

- it is near chance after its first evaluation, which came after at least 100 optimizer
  steps: quality within 5% of the distance from the chance level (the majority class's share
  of the eval split) to a perfect score; or
- the front holds a point at most as costly in every other objective, all of them known
  before training (artifact size, trainable parameters), whose quality is above the most
  the trial can still reach. For accuracy-like metrics (in [0, 1]) that is its quality plus
  the gap to a perfect score times the fraction of training still ahead, plus 0.05
  (``reachable``). In the 85 completed trials of the GPU front run 4 (bench/RESULTS.md) no
  curve closed a larger share of its gap than the share of training ahead (the closest:
  from 0.713 after a third of its training to 0.904, just short of it), while a fixed
  margin, 0.1 + 0.2 x the fraction ahead (the rule before), was exceeded by 11 of
  their 278 evaluations: LoRA trials went from 0.53 after a sixth of their training to
  0.90. For perplexity and loss the point must be better by a relative 0.1 + 0.2 x the
  fraction ahead. Quantization after training only lowers quality, so a trial stopped by
  this rule could not have reached the front.

A study with an objective not known before training (latency, training time) uses the first
rule only: such a trial could still win on that objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["KNOWN_BEFORE_TRAINING", "QUALITY", "StopRule", "reachable", "stop_reason"]

QUALITY = ("accuracy", "macro_f1", "perplexity", "eval_loss")
KNOWN_BEFORE_TRAINING = ("size_mb", "trainable_params")
CHANCE_MARGIN = 0.05
CHANCE_MIN_STEPS = 100  # fewer steps than this may not have moved any model off chance yet


@dataclass(frozen=True)
class StopRule:
    """What a trial needs to decide it is hopeless; plain data, sent with the trial."""

    quality: str  # the study's quality objective
    maximize: bool
    chance: float | None = None  # majority-class share of the eval split (classification)
    # Pareto-optimal completed trials: ({objective: value}, trial number)
    front: tuple[tuple[Mapping[str, float], int], ...] = ()
    costs: tuple[str, ...] = ()  # the other objectives; all known before training, or ()


def stop_reason(rule: StopRule, value: float, done: float, costs: Mapping[str, float],
                steps: int, first: bool) -> str | None:
    """Why a trial at quality ``value`` after ``done`` (0..1) of its training, ``steps``
    optimizer steps, should stop, given its ``costs`` known before training; None if it may
    still reach the front."""
    at = f"after {done:.0%} of training ({steps} steps)"
    if first and steps >= CHANCE_MIN_STEPS and rule.chance is not None and rule.maximize:
        bar = rule.chance + CHANCE_MARGIN * (1.0 - rule.chance)
        if value <= bar:
            return (f"near chance: {rule.quality} {value:.4g} {at} (chance level "
                    f"{rule.chance:.4g}, stop at or below {bar:.4g})")
    if not rule.costs or any(c not in costs for c in rule.costs):
        return None
    margin = 0.1 + 0.2 * (1.0 - done)
    best = reachable(value, done)
    for point, number in rule.front:
        if any(point[c] > costs[c] for c in rule.costs):
            continue
        better = (point[rule.quality] > best if rule.maximize
                  else point[rule.quality] * (1.0 + margin) <= value)
        if better:
            where = ", ".join(f"{c} {point[c]:.4g} <= {costs[c]:.4g}" for c in rule.costs)
            bound = (f"it can reach at most {best:.4g}" if rule.maximize
                     else f"margin {margin:.2f}")
            return (f"dominated: trial {number} has {rule.quality} {point[rule.quality]:.4g} "
                    f"at {where}; this trial has {value:.4g} {at}, {bound}")
    return None


def reachable(value: float, done: float) -> float:
    """The most an accuracy-like quality (in [0, 1]) at ``value`` after ``done`` of its
    training can end at: the gap to a perfect score closed in proportion to the training
    still ahead, and 0.05 for noise. Measured curves never closed more (bench/RESULTS.md)."""
    return value + (1.0 - value) * (1.0 - done) + 0.05
