"""Task quality, measured on the held-out split with the model as it ships."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from paretune.objectives._registry import Outcome, register_objective


def predict(model: Any, data: Any, device: str) -> Any:
    """Argmax class ids of ``model`` on a tokenized split, as a CPU tensor."""
    import torch

    from paretune import devicelock
    from paretune.spaces.train import batches

    preds = []
    with torch.inference_mode():
        for batch, _ in batches(data, 64, torch.arange(len(data)), device):
            with devicelock.shared(device):  # a timing on this device waits for it
                preds.append(model(**batch).logits.argmax(-1).cpu())
    return torch.cat(preds)


def predictions(outcome: Outcome) -> Any:
    """Eval-split argmax predictions, computed once per trial."""
    if "predictions" not in outcome.cache:
        outcome.cache["predictions"] = predict(outcome.model, outcome.eval_data, outcome.device)
    return outcome.cache["predictions"]


def macro_f1_score(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 over every class that occurs in ``labels`` or
    ``preds`` (scikit-learn's ``f1_score(average='macro')``): a class the model never
    predicts scores 0, however rare it is."""
    hits = Counter(p for p, y in zip(preds, labels) if p == y)
    predicted, actual = Counter(preds), Counter(labels)
    classes = set(predicted) | set(actual)
    # per class F1 = 2PR / (P + R) = 2 tp / (predicted + actual); 0 when tp = 0
    f1 = [2 * hits[c] / (predicted[c] + actual[c]) for c in classes]
    return sum(f1) / len(f1) if f1 else 0.0


@register_objective("accuracy", "maximize")
def accuracy(outcome: Outcome) -> float:
    """Fraction of held-out examples classified correctly."""
    return float((predictions(outcome) == outcome.eval_data.labels).float().mean())


@register_objective("macro_f1", "maximize")
def macro_f1(outcome: Outcome) -> float:
    """Mean per-class F1 on the held-out split: low when the model ignores some classes."""
    return macro_f1_score(predictions(outcome).tolist(), outcome.eval_data.labels.tolist())


def _eval_loss(outcome: Outcome) -> float:
    """Mean next-token cross-entropy over the held-out tokens that carry a label, per token
    of the base model's tokenizer (``TokenizedSplit.loss_scale``)."""
    if "eval_loss" not in outcome.cache:
        import torch
        import torch.nn.functional as F

        from paretune import devicelock
        from paretune.spaces.train import batches

        data, total, count = outcome.eval_data, 0.0, 0
        with torch.inference_mode():
            for batch, labels in batches(data, 16, torch.arange(len(data)), outcome.device):
                with devicelock.shared(outcome.device):
                    logits = outcome.model(**batch).logits[:, :-1].float()
                    target = labels[:, 1:]
                    total += float(F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                        ignore_index=-100, reduction="sum",
                    ))
                count += int((target != -100).sum())
        # per token of the base tokenizer, whatever vocabulary the model ships with
        outcome.cache["eval_loss"] = total / max(1, count) * data.loss_scale
    return float(outcome.cache["eval_loss"])


@register_objective("eval_loss", "minimize", tasks=("causal_lm",))
def eval_loss(outcome: Outcome) -> float:
    """Mean next-token cross-entropy (nats) on the held-out split, response tokens only, per
    token of the base model's tokenizer (a trimmed vocabulary's pieces are not counted as
    tokens of their own: it is scored on the same text)."""
    return _eval_loss(outcome)


@register_objective("perplexity", "minimize", tasks=("causal_lm",))
def perplexity(outcome: Outcome) -> float:
    """exp(eval_loss): the held-out perplexity of the model as it ships."""
    import math

    return math.exp(_eval_loss(outcome))
