"""`paretune front` lists each point's effective settings, not only the searched knobs."""

from __future__ import annotations

from typing import Any

import pytest

from paretune.cli import main
from paretune.search._summary import effective_params, summary
from paretune.trial import TrialResult, TrialSpec


def test_effective_params_keep_what_changes_something() -> None:
    params = {
        "train.lr": 0.002, "train.batch_size": 16, "peft.method": "lora", "lora.r": 16,
        "lora.alpha": 16, "quant.format": "int4-g64", "quant.mode": "ptq",
    }
    assert effective_params(params) == {
        "train.lr": 0.002,  # away from its default
        "peft.method": "lora",  # its default, but it decides that lora.* applies
        "lora.r": 16,  # away from its default (8)
        "quant.format": "int4-g64",  # away from fp32: this point is 4-bit
    }
    assert summary({"peft.method": "none", "quant.format": "fp32"}) == "peft.method=none"


def test_front_table_shows_the_format_of_a_quantized_point(
    raw_config: dict[str, Any], tmp_path: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    from paretune.search import front_trials, load_study, parse_config, run_study

    sizes = {"fp32": 32.0, "int4-g128": 4.0}

    def by_format(spec: TrialSpec) -> TrialResult:
        size = sizes[spec.params["quant.format"]]
        return TrialResult(spec.number, "complete", {"accuracy": 0.5 + size / 100,
                                                     "size_mb": size})

    raw_config["study"].update(sampler="grid", n_trials=4)
    raw_config["space"].update({"quant.format": list(sizes), "train.lr": 0.001,
                                "peft.method": "none"})
    run_study(parse_config(raw_config), trial_fn=by_format, log=lambda line: None)
    storage = raw_config["study"]["storage"]
    capsys.readouterr()
    assert main(["front", "--study", "t", "--storage", storage]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line[:1].isdigit()}
    study = load_study("t", storage)
    front = front_trials(study)
    assert len(front) == 2
    for t in front:
        row = rows[str(t.number)]
        if t.user_attrs["params"]["quant.format"] == "int4-g128":
            assert "quant.format=int4-g128" in row
        else:
            assert "quant." not in row  # fp32: quantization is off, nothing to show
        assert "train.lr=0.001" in row
