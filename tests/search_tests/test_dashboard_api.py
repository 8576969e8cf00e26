"""What optuna-dashboard (as installed) shows of a paretune trial, read through its own
API: a readable summary of the trial, and its constraint values."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from paretune.trial import TrialResult, TrialSpec


def _get(app: Any, path: str) -> Any:
    """One GET through the dashboard's WSGI application, in this process."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET",
                               "QUERY_STRING": "after=0", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


def fake(spec: TrialSpec) -> TrialResult:
    lr = spec.params["train.lr"]
    return TrialResult(spec.number, "complete", {"accuracy": 0.5 + 100 * lr, "size_mb": 1 / lr})


@pytest.fixture
def detail(raw_config: dict[str, Any]) -> dict[str, Any]:
    dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    from paretune.search import parse_config, run_study
    from paretune.search._storage import open_storage

    raw_config["study"].update(n_trials=6, sampler="random", constraints=["accuracy >= 0.75"])
    raw_config["space"].update({"peft.method": ["none", "lora"],
                                "quant.format": ["fp32", "int4-g64"]})
    run_study(parse_config(raw_config), trial_fn=fake, log=lambda line: None)
    app = dashboard.wsgi(open_storage(raw_config["study"]["storage"], create=False))
    (study,) = _get(app, "/api/studies")["study_summaries"]
    return _get(app, f"/api/studies/{study['study_id']}")  # type: ignore[no-any-return]


def _attrs(trial: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def test_each_trial_has_a_readable_summary_of_its_settings(detail: dict[str, Any]) -> None:
    from paretune.search._summary import effective_params

    for trial in detail["trials"]:
        attrs = _attrs(trial)
        params = json.loads(attrs["params"])
        summary = attrs["summary"]
        assert f"train.lr={params['train.lr']:.3g}" in summary
        assert f"peft.method={params['peft.method']}" in summary  # the method, always
        if params["quant.format"] == "int4-g64":
            assert "quant.format=int4-g64" in summary  # away from its default (fp32): shown
        else:
            assert "quant.format" not in summary
        assert "train.batch_size" not in summary  # at its default: left out
        assert summary == ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in effective_params(params).items()
        )


def test_constraints_are_shown_and_match_feasibility(detail: dict[str, Any]) -> None:
    trials = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert trials
    for trial in trials:
        accuracy = float(_attrs(trial)["accuracy"])
        assert trial["constraints"] == [pytest.approx(0.75 - accuracy)]
        assert _attrs(trial)["feasible"] == str(accuracy >= 0.75)
