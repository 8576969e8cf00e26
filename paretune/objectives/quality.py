"""Task quality, measured on the held-out split with the model as it ships."""

from __future__ import annotations

from typing import Any

from paretune.objectives._registry import Outcome, register_objective


def predictions(outcome: Outcome) -> Any:
    """Eval-split argmax predictions, computed once per trial."""
    if "predictions" not in outcome.cache:
        import torch

        from paretune.spaces.train import batches

        data, preds = outcome.eval_data, []
        order = torch.arange(len(data))
        with torch.inference_mode():
            for batch, _ in batches(data, 64, order, outcome.device):
                preds.append(outcome.model(**batch).logits.argmax(-1).cpu())
        outcome.cache["predictions"] = torch.cat(preds)
    return outcome.cache["predictions"]


@register_objective("accuracy", "maximize")
def accuracy(outcome: Outcome) -> float:
    """Fraction of held-out examples classified correctly."""
    return float((predictions(outcome) == outcome.eval_data.labels).float().mean())


def _eval_loss(outcome: Outcome) -> float:
    """Mean next-token cross-entropy over the held-out tokens that carry a label."""
    if "eval_loss" not in outcome.cache:
        import torch
        import torch.nn.functional as F

        from paretune.spaces.train import batches

        data, total, count = outcome.eval_data, 0.0, 0
        with torch.inference_mode():
            for batch, labels in batches(data, 16, torch.arange(len(data)), outcome.device):
                logits = outcome.model(**batch).logits[:, :-1].float()
                target = labels[:, 1:]
                total += float(F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                    ignore_index=-100, reduction="sum",
                ))
                count += int((target != -100).sum())
        outcome.cache["eval_loss"] = total / max(1, count)
    return float(outcome.cache["eval_loss"])


@register_objective("eval_loss", "minimize", tasks=("causal_lm",))
def eval_loss(outcome: Outcome) -> float:
    """Mean next-token cross-entropy (nats) on the held-out split, response tokens only."""
    return _eval_loss(outcome)


@register_objective("perplexity", "minimize", tasks=("causal_lm",))
def perplexity(outcome: Outcome) -> float:
    """exp(eval_loss): the held-out perplexity of the model as it ships."""
    import math

    return math.exp(_eval_loss(outcome))
