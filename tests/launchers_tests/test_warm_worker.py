"""What a long-lived worker keeps between trials: the tokenized data, found again by key."""

from __future__ import annotations

from pathlib import Path

from paretune import data, models


def test_second_tokenize_in_a_worker_hits_the_memory_cache(
    tiny_model: str, tmp_path: Path
) -> None:
    _, tokenizer = models.load_base(tiny_model, 3)
    before = data.tokenizer_fingerprint(tokenizer)
    texts, labels = ["goal match team", "bank market price"], [0, 1]
    first = data.tokenize(tokenizer, texts, labels, 16, "warm-test", str(tmp_path))
    # the call set truncation and padding on the backend; the key must not change with them
    assert data.tokenizer_fingerprint(tokenizer) == before
    assert data.tokenize(tokenizer, texts, labels, 16, "warm-test", str(tmp_path)) is first
