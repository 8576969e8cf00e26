"""A user's own data, as it really comes: every mistake is one line and exit 2 before the
study is written, or a warning with counts where the run goes on; trials see the same rows."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from paretune import data
from paretune.cli import main
from paretune.errors import ConfigError
from paretune.search import parse_config

WORDS = {
    "sport": "goal match team coach league score",
    "tech": "software chip computer code robot phone",
    "money": "bank market price stock loan trade",
}


def rows(n: int, seed: int = 0, labels: tuple[str, ...] = tuple(WORDS)) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        out.append({"text": " ".join(rng.sample(WORDS[label].split(), 3)), "label": label})
    return out


def write_csv(path: Path, items: list[dict[str, Any]], encoding: str = "utf-8") -> str:
    with path.open("w", newline="", encoding=encoding) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(items[0]))
        writer.writeheader()
        writer.writerows(items)
    return str(path)


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value, indent=2))
    return str(path)


def run_cli(raw: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``paretune run`` that must fail: one line on stderr, exit 2, no storage written."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["run", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("paretune: error: "), err
    assert not Path(raw["study"]["storage"].removeprefix("sqlite:///")).exists()
    return err


def warnings_of(raw: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    parse_config(raw)
    return [line for line in capsys.readouterr().err.splitlines() if line]


# (what, edit of the raw config given a tmp dir, words the one-line error must contain)
MISTAKES = [
    ("single class", lambda r, d: r["task"].update(
        dataset=write_csv(d / "one.csv", rows(40, labels=("sport",)))),
     ["task.label_column 'label'", "single class ('sport')", "2 or more"]),
    ("ID column as label", lambda r, d: r["task"].update(
        dataset=write_csv(d / "ids.csv", [{**x, "id": f"r{i}"} for i, x in enumerate(rows(40))]),
        label_column="id"),
     ["task.label_column 'id'", "40 distinct values in the 40 rows", "ID column"]),
    ("eval file lacks a column", lambda r, d: r["task"].update(
        eval_split=write_csv(d / "eval.csv", [{"body": x["text"], "label": x["label"]}
                                              for x in rows(12)])),
     ["task.text_column 'text'", "eval file task.eval_split", "eval.csv", "['body', 'label']"]),
    ("malformed JSONL line", lambda r, d: r["task"].update(dataset=str(d / "bad.jsonl")),
     ["task.dataset", "bad.jsonl", "line 3 is not valid JSON"]),
    ("JSON object of columns (pandas' to_json default)", lambda r, d: r["task"].update(
        dataset=write_json(d / "columns.json", {
            col: {str(i): x[col] for i, x in enumerate(rows(40))} for col in ("text", "label")
        })),
     ["task.dataset", "columns.json", "single JSON object (keys 'text', 'label')",
      "not rows", "orient='records'"]),
    ("JSON object wrapping the rows", lambda r, d: r["task"].update(
        dataset=write_json(d / "wrapped.json", {"data": rows(40)})),
     ["task.dataset", "wrapped.json", "single JSON object (keys 'data')", "not rows"]),
    ("CSV row with an unquoted comma", lambda r, d: r["task"].update(dataset=str(d / "comma.csv")),
     ["task.dataset", "comma.csv", "line 4 has 3 fields, but the header has 2"]),
    ("CSV in Windows-1252 (Excel's plain CSV)", lambda r, d: r["task"].update(
        dataset=write_csv(d / "excel.csv", [*rows(30), {"text": "café loan", "label": "money"}],
                          encoding="cp1252")),
     ["task.dataset", "excel.csv", "is not UTF-8", "line 32", "0xe9", "CSV UTF-8"]),
    ("tab-separated file named .csv", lambda r, d: r["task"].update(
        dataset=write_text(d / "tabs.csv", "text\tlabel\n" + "".join(
            f"{x['text']}\t{x['label']}\n" for x in rows(30)))),
     ["task.text_column 'text'", "tabs.csv", "['text\\tlabel']", "split by '\\t'",
      "save the file comma-separated"]),
    ("tab-separated .tsv", lambda r, d: r["task"].update(
        dataset=write_text(d / "data.tsv", "text\tlabel\ngoal\tsport\n")),
     ["task.dataset", "data.tsv", "ends in .tsv", "as a comma-separated .csv"]),
    (".cvs typo", lambda r, d: r["task"].update(dataset=str(d / "data.cvs")),
     ["task.dataset", "data.cvs", "does not exist", "Did you mean", "data.csv"]),
    ("local path without a suffix", lambda r, d: r["task"].update(dataset=str(d / "data")),
     ["task.dataset", "does not exist"]),
    ("eval_split 0", lambda r, d: r["task"].update(eval_split=0),
     ["task.eval_split", "got 0 (an integer)", "like 0.2"]),
    ("eval_split a list", lambda r, d: r["task"].update(eval_split=[0.2]),
     ["task.eval_split", "[0.2]"]),
    ("missing eval file", lambda r, d: r["task"].update(eval_split=str(d / "eval.csv")),
     ["task.eval_split", "eval.csv", "does not exist"]),
    ("hub split of a local file", lambda r, d: r["task"].update(eval_split="test"),
     ["task.eval_split 'test'", "is not one", "fraction like 0.2"]),
    ("empty rows refused", lambda r, d: r["task"].update(
        dataset=write_csv(d / "blank.csv", rows(30) + [{"text": "", "label": "sport"},
                                                      {"text": "goal", "label": " "}]),
        on_bad_rows="error"),
     ["task.dataset", "2 rows with empty values", "1 with an empty 'label'",
      "1 with an empty 'text'", "data row 31", "task.on_bad_rows: drop"]),
    ("eval labels training lacks refused", lambda r, d: r["task"].update(
        eval_split=write_csv(d / "eval.csv", rows(9) + [{"text": "x", "label": "weather"}] * 2),
        on_bad_rows="error"),
     ["eval file", "2 eval rows whose label never occurs in the training rows", "'weather' (2)"]),
    ("unknown on_bad_rows", lambda r, d: r["task"].update(on_bad_rows="skip"),
     ["task.on_bad_rows", "drop, error", "'skip'"]),
    # a quote never closed: before, the lines after it became one text, silently
    ("CSV quote not closed", lambda r, d: r["task"].update(dataset=write_text(
        d / "quote.csv", "text,label\n" + "".join(f"{x['text']},{x['label']}\n"
                                                  for x in rows(30))
        + '"goal match, team,sport\nbank loan,money\nthe chip has a 6" screen,tech\n')),
     ["task.dataset", "quote.csv", "line 34 is not valid CSV",
      "the record that starts on line 32 holds a quote that is not closed"]),
    ("CSV with a blank first line", lambda r, d: r["task"].update(dataset=write_text(
        d / "blank1.csv", "\ntext,label\ngoal,sport\n")),
     ["task.dataset", "blank1.csv", "line 1, its header, is empty"]),
    ("CSV header names a column twice", lambda r, d: r["task"].update(dataset=write_text(
        d / "twice.csv", "text,label,label\ngoal,sport,\n")),
     ["task.dataset", "twice.csv", "['label'] more than once"]),
    ("text column all empty", lambda r, d: r["task"].update(dataset=write_csv(
        d / "notext.csv", [{"text": "", "label": x["label"]} for x in rows(30)])),
     ["every one of the 30 rows", "30 with an empty 'text'", "task.text_column 'text'"]),
    ("text pairs", lambda r, d: r["task"].update(text_column=["premise", "hypothesis"]),
     ["task.text_column must be one column name", "['premise', 'hypothesis']",
      "pairs are not supported"]),
    ("eval file of other classes", lambda r, d: r["task"].update(eval_split=write_csv(
        d / "upper.csv", [{**x, "label": x["label"].upper()} for x in rows(9)])),
     ["none of the 9 eval rows", "has a class of the 180 training rows", "'SPORT' (3)",
      "training's 'sport' (60)", "give eval rows of the training rows' classes"]),
    ("eval_split leaving one class", lambda r, d: r["task"].update(
        dataset=write_csv(d / "few.csv", rows(8, labels=("sport", "tech"))), eval_split=0.85),
     ["training rows hold a single class", "hold out fewer for eval (task.eval_split 0.85)"]),
]


@pytest.mark.parametrize("what,edit,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_data_mistake_is_one_line_exit_2_nothing_written(
    what: str, edit: Any, words: list[str], raw_config: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_csv(tmp_path / "data.csv", rows(30))  # the file the typo means
    write_jsonl(tmp_path / "bad.jsonl", rows(2))
    with (tmp_path / "bad.jsonl").open("a") as fh:
        fh.write('{"text": "goal match", "label": sport}\n')
    (tmp_path / "comma.csv").write_text("text,label\ngoal match,sport\nbank loan,money\n"
                                        "chip, code,tech\n")
    edit(raw_config, tmp_path)
    err = run_cli(raw_config, tmp_path, capsys)
    for word in words:
        assert word in err, err


def test_empty_rows_are_dropped_with_a_count_and_the_run_goes_on(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Empty strings would have become a class of their own; now they are dropped, counted
    on stderr, and the trial trains on the rows the driver checked."""
    good = rows(60)
    blank = [{"text": "", "label": "sport"}, {"text": "goal", "label": ""},
             {"text": "  ", "label": "tech"}]
    raw_config["task"]["dataset"] = write_csv(tmp_path / "blank.csv", [*good[:30], *blank,
                                                                       *good[30:]])
    raw_config["study"]["n_trials"] = 1
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw_config))
    assert main(["run", str(config), "-q"]) == 0
    err = capsys.readouterr().err
    assert ("paretune: warning: task.dataset '" in err and "dropped 3 of 63 rows with empty "
            "values (1 with an empty 'label', 2 with an empty 'text') (task.on_bad_rows: drop)"
            in err), err
    cfg = parse_config(raw_config)
    loaded = data.load_task_data(cfg.context()["task"], cfg.study.seed)
    assert loaded.label_names == ["money", "sport", "tech"]
    assert len(loaded.train_texts) + len(loaded.eval_texts) == 60
    assert "" not in loaded.train_texts + loaded.eval_texts

    from paretune.search import load_study

    study = load_study("t", raw_config["study"]["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_eval_labels_training_lacks_are_dropped_with_a_count(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw_config["task"]["eval_split"] = write_csv(
        tmp_path / "eval.csv", rows(9) + [{"text": "rain", "label": "weather"}] * 3
    )
    notes = warnings_of(raw_config, capsys)
    assert len(notes) == 1
    assert "dropped 3 of 12 eval rows whose label never occurs in the training rows: " \
           "'weather' (3)" in notes[0]
    cfg = parse_config(raw_config)
    loaded = data.load_task_data(cfg.context()["task"], 0)
    assert loaded.label_names == ["money", "sport", "tech"]  # no untrainable class in the head
    assert len(loaded.eval_labels) == 9


def test_imbalanced_classes_are_warned_about_with_the_majority_baseline(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = rows(80, labels=("sport",) * 8 + ("tech", "money"))
    raw_config["task"]["dataset"] = write_csv(tmp_path / "skewed.csv", items)
    notes = warnings_of(raw_config, capsys)
    assert len(notes) == 1 and "task.label_column 'label' is imbalanced" in notes[0]
    cfg = parse_config(raw_config)
    loaded = data.load_task_data(cfg.context()["task"], 0)
    share = loaded.eval_labels.count(loaded.label_names.index("sport")) / len(loaded.eval_labels)
    assert f"always predicting 'sport' scores accuracy {share:.2f}" in notes[0]
    assert "macro_f1" in notes[0]


def test_balanced_clean_data_warns_nothing(
    raw_config: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert warnings_of(raw_config, capsys) == []


def test_json_array_and_bom_csv_read_as_users_expect(
    raw_config: dict[str, Any], tmp_path: Path
) -> None:
    """A .json array (was: unhashable type 'dict'), and Excel's "CSV UTF-8" with a byte-order
    mark (was: '\\ufefftext' is not a column), give the same rows as a plain file."""
    items = rows(40)
    plain = write_csv(tmp_path / "plain.csv", items)
    bom = write_csv(tmp_path / "bom.csv", items, encoding="utf-8-sig")
    assert Path(bom).read_bytes().startswith(b"\xef\xbb\xbftext,label")
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(items, indent=2))
    loaded = []
    for path in (plain, bom, str(array)):
        raw_config["task"]["dataset"] = path
        cfg = parse_config(raw_config)
        loaded.append(data.load_task_data(cfg.context()["task"], 0))
    assert loaded[0].train_texts and loaded[0].label_names == ["money", "sport", "tech"]
    assert loaded[1].fingerprint == loaded[0].fingerprint == loaded[2].fingerprint


def test_json_array_of_non_objects_names_the_item(
    raw_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([*rows(4), ["goal", "sport"]]))
    raw_config["task"]["dataset"] = str(path)
    err = run_cli(raw_config, tmp_path, capsys)
    assert "item 4 of its array is list, not an object" in err


def test_local_paths_are_made_absolute(
    raw_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "train.csv", rows(30))
    write_csv(tmp_path / "eval.csv", rows(9, seed=1))
    raw_config["task"].update(dataset="train.csv", eval_split="eval.csv")
    task = parse_config(raw_config).context()["task"]
    assert task["dataset"] == str(tmp_path / "train.csv")
    assert task["eval_split"] == str(tmp_path / "eval.csv")


@pytest.mark.parametrize("value,local", [
    ("data.cvs", True), ("data", False), ("./data", True), ("a/b/c", True),
    ("owner/name", False), ("imdb", False), ("bbc", False), ("org/Llama-3.1-8B", False),
])
def test_what_looks_like_a_local_path(value: str, local: bool, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing of these names exists here
    assert data.looks_local(value) is local


def test_hub_name_without_datasets_installed_is_a_config_error_in_the_driver(
    raw_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails, as when not installed
    raw_config["task"]["dataset"] = "owner/name"
    with pytest.raises(ConfigError, match="task.dataset 'owner/name' is not a local file"):
        parse_config(raw_config)


def test_describe_eval_names_file_rows_classes_and_max_length(
    raw_config: dict[str, Any], tiny_csv: str
) -> None:
    context = parse_config(raw_config).context()
    line = data.describe_eval(context)
    assert line.startswith("eval set: 45 rows, held out at random from the 180 usable rows of ")
    assert tiny_csv in line and "(task.eval_split 0.25, seed 0)" in line
    loaded = data.load_task_data(context["task"], 0)
    counts = [loaded.eval_labels.count(i) for i in range(3)]
    assert sum(counts) == 45 and min(counts) > 0
    assert "per class: money {}, sport {}, tech {};".format(*counts) in line
    assert line.endswith("max_length 32 tokens")


# the tokenized-data cache ------------------------------------------------------------------


def _tokenize(tokenizer: Any, cache: Path) -> data.TokenizedSplit:
    texts = ["goal match team", "bank loan", "chip code robot phone"]
    return data.tokenize(tokenizer, texts, [0, 1, 2], 8, "cache-test", str(cache))


def test_tokenized_cache_is_safetensors_user_only_and_never_unpickled(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    import torch

    from paretune import models

    _, tokenizer = models.load_base(tiny_model, 3)
    data._TOKEN_CACHE.clear()
    first = _tokenize(tokenizer, tmp_path / "cache")
    (path,) = (tmp_path / "cache" / "tokenized").iterdir()
    assert path.suffix == ".safetensors"
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the tokenized cache must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(type(tokenizer), "__call__", refuse)  # read from disk, not re-made
    data._TOKEN_CACHE.clear()
    again = _tokenize(tokenizer, tmp_path / "cache")
    assert again is not first and torch.equal(again.input_ids, first.input_ids)
    assert torch.equal(again.labels, first.labels)


def test_tampered_tokenized_cache_is_detected_logged_and_rebuilt(
    tiny_model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from paretune import models

    _, tokenizer = models.load_base(tiny_model, 3)
    data._TOKEN_CACHE.clear()
    first = _tokenize(tokenizer, tmp_path)
    (path,) = (tmp_path / "tokenized").iterdir()
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01  # a flipped bit in the last tensor's data: still a valid file
    path.write_bytes(bytes(blob))
    data._TOKEN_CACHE.clear()
    with caplog.at_level("WARNING", logger="paretune.data"):
        rebuilt = _tokenize(tokenizer, tmp_path)
    assert "does not match its content hash; rebuilding it" in caplog.text
    assert torch.equal(rebuilt.input_ids, first.input_ids)
    assert torch.equal(rebuilt.attention_mask, first.attention_mask)
    assert torch.equal(rebuilt.labels, first.labels)

    path.write_bytes(b"not a safetensors file")  # corrupt: unreadable, rebuilt too
    data._TOKEN_CACHE.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="paretune.data"):
        assert torch.equal(_tokenize(tokenizer, tmp_path).input_ids, first.input_ids)
    assert "is unreadable" in caplog.text
    assert data._read_cached(path) is not None  # the rebuilt file passes its check


def test_labels_that_differ_in_spelling_only_are_one_class(tmp_path: Path) -> None:
    # a trailing space (hand-edited sheets), 1.0 for 1 (pandas: an integer column with blanks)
    items = [{"text": x["text"], "label": {"sport": "1", "tech": "2", "money": "10"}[x["label"]]}
             for x in rows(60)]
    for i, item in enumerate(items):
        if i % 4 == 0:
            item["label"] += " "
        elif i % 4 == 1:
            item["label"] += ".0"
    task = {"type": "classification", "dataset": write_csv(tmp_path / "d.csv", items),
            "text_column": "text", "label_column": "label", "prompt_column": None,
            "eval_split": 0.25, "max_train_rows": None, "max_eval_rows": None,
            "on_bad_rows": "drop"}
    dataset = data.load_task_data(task, seed=0)
    assert dataset.label_names == ["1", "2", "10"]  # one class each, integers in their order
    assert not dataset.notes
    # letters in another case may be another class: kept apart, with a warning
    for i, item in enumerate(items):
        item["label"] = "Sport" if i % 6 == 0 else "sport" if i % 6 == 3 else "tech"
    task["dataset"] = write_csv(tmp_path / "case.csv", items)
    dataset = data.load_task_data(task, seed=0)
    assert dataset.label_names == ["Sport", "sport", "tech"]
    assert any("differ only in case: 'Sport' / 'sport'" in note for note in dataset.notes)


def test_rows_are_padded_on_the_right_whatever_the_tokenizer_pads(
    tiny_model: str, tmp_path: Path
) -> None:
    # Llama's and Gemma's tokenizers pad on the left; batches keep each row's first columns,
    # so a left-padded row kept its padding and lost its text (trained and scored on pads)
    from paretune import models

    _, tokenizer = models.load_base(tiny_model, 3)
    data._TOKEN_CACHE.clear()
    right = _tokenize(tokenizer, tmp_path / "right")
    tokenizer.padding_side = "left"
    data._TOKEN_CACHE.clear()
    left = _tokenize(tokenizer, tmp_path / "left")
    pad = tokenizer.pad_token_id
    assert (left.input_ids[:, 0] != pad).all()  # every row starts with its text
    assert (left.attention_mask[:, 0] == 1).all()
    assert (left.input_ids == right.input_ids).all()
