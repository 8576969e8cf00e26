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
