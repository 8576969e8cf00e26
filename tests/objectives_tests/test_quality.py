"""Quality metrics that see imbalance: a model that predicts one class scores high accuracy
and low macro_f1."""

from __future__ import annotations

from typing import Any

import pytest

from paretune.objectives import Outcome, get_objective
from paretune.objectives.quality import macro_f1_score


def _outcome(model: Any, labels: list[int]) -> Outcome:
    import torch

    from paretune.data import TokenizedSplit

    n = len(labels)
    data = TokenizedSplit(
        input_ids=torch.ones((n, 4), dtype=torch.long),
        attention_mask=torch.ones((n, 4), dtype=torch.long),
        labels=torch.tensor(labels),
    )
    return Outcome(model=model, eval_data=data, artifact_dir="", device="cpu",
                   task_type="classification", stats={}, measure={}, cache={})


class _Always:
    """A classifier that gives every row the same class."""

    def __init__(self, cls: int, n_classes: int) -> None:
        self.cls, self.n_classes = cls, n_classes

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        logits = torch.zeros((input_ids.shape[0], self.n_classes))
        logits[:, self.cls] = 1.0
        return type("Out", (), {"logits": logits})()


def test_one_class_model_on_imbalanced_eval_scores_high_accuracy_low_macro_f1() -> None:
    labels = [0] * 18 + [1] + [2]  # the majority class is 90% of the eval rows
    outcome = _outcome(_Always(0, 3), labels)
    accuracy = get_objective("accuracy").fn(outcome)
    macro_f1 = get_objective("macro_f1").fn(outcome)
    assert accuracy == pytest.approx(0.9)
    # class 0: precision 18/20, recall 1 -> F1 36/38; classes 1 and 2 never predicted -> 0
    assert macro_f1 == pytest.approx((36 / 38) / 3)
    assert macro_f1 < 0.35 < accuracy
    assert get_objective("macro_f1").direction == "maximize"


def test_macro_f1_of_a_perfect_and_a_mixed_model() -> None:
    assert macro_f1_score([0, 1, 2, 1], [0, 1, 2, 1]) == 1.0
    # class 0: tp 1, predicted 2, actual 1 -> 2/3; class 1: tp 1, predicted 1, actual 2 -> 2/3
    assert macro_f1_score([0, 0, 1], [0, 1, 1]) == pytest.approx(2 / 3)
    # a class only predicted, never true, counts as 0 (as scikit-learn's average='macro')
    assert macro_f1_score([0, 2], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1_score([], []) == 0.0


def test_macro_f1_is_a_classification_objective_only() -> None:
    from paretune.objectives import objectives

    assert "macro_f1" in {o.name for o in objectives("classification")}
    assert "macro_f1" not in {o.name for o in objectives("causal_lm")}
