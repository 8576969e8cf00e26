"""Plot files for every kind, as valid HTML, PNG, PDF and SVG, from a stored study; images
need no browser."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from paretune.errors import ConfigError
from paretune.search._plots import KINDS, make_figure, make_static, write_figure, write_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _study(small_study: Any) -> Any:
    from paretune.search import load_study

    return load_study(small_study.name, small_study.storage)


def check_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    assert len(data) > 10_000  # a real picture, not an empty canvas
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_html(path: Path) -> None:
    text = path.read_text()
    assert text.lstrip().lower().startswith(("<html", "<!doctype html"))
    assert text.rstrip().endswith("</html>")
    assert "plotly" in text.lower() and "Plotly.newPlot" in text


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_writes_valid_html(small_study: Any, kind: str, tmp_path: Path) -> None:
    out = tmp_path / f"{kind}.html"
    write_figure(make_figure(_study(small_study), kind), out)
    check_html(out)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_writes_valid_png(small_study: Any, kind: str, tmp_path: Path) -> None:
    out = tmp_path / f"{kind}.png"
    write_plot(_study(small_study), kind, [], out)
    width, height = check_png(out)
    assert width == 1000 and height >= 600


@pytest.mark.parametrize("suffix,magic", [(".pdf", b"%PDF-"), (".svg", b"<?xml")])
def test_pdf_and_svg(small_study: Any, suffix: str, magic: bytes, tmp_path: Path) -> None:
    out = tmp_path / f"front{suffix}"
    write_plot(_study(small_study), "pareto", [], out)
    assert out.read_bytes().startswith(magic)


def test_png_on_a_machine_without_chrome_or_kaleido(
    small_study: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's plot command on a head node or CI box: no browser, no kaleido."""
    from paretune.cli import main

    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no chrome, no chromium
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido fails
    out = tmp_path / "front.png"
    assert main(["plot", "--study", small_study.name, "--storage", small_study.storage,
                 "--kind", "pareto", "-o", str(out)]) == 0
    check_png(out)


def test_static_pareto_greys_infeasible_trials_like_plotly(small_study: Any) -> None:
    study = _study(small_study)
    fig = make_static(study, "pareto", ["accuracy", "latency_ms"])
    assert fig.axes[0].get_xlabel() == "accuracy" and fig.axes[0].get_ylabel() == "latency_ms"


def test_history_shows_the_best_value_so_far(small_study: Any) -> None:
    import optuna

    study = _study(small_study)
    fig = make_figure(study, "history", ["accuracy"])
    values, best = fig.data
    assert best.name == "accuracy: best so far"
    done = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                  key=lambda t: t.number)
    running = []
    for t in done:
        running.append(max([*running[-1:], t.user_attrs["accuracy"]]))
    assert list(best.y) == running and list(values.y) == [t.user_attrs["accuracy"] for t in done]
    static = make_static(study, "history", ["accuracy", "latency_ms"])
    assert [ax.get_title() for ax in static.axes] == ["accuracy", "latency_ms"]


def test_pareto_is_3d_for_three_objectives_and_2d_for_two_targets(small_study: Any) -> None:
    study = _study(small_study)
    three = make_figure(study, "pareto")
    assert {t.type for t in three.data} == {"scatter3d"}
    assert three.layout.scene.xaxis.title.text == "accuracy"
    two = make_figure(study, "pareto", ["accuracy", "size_mb"])
    assert {t.type for t in two.data} == {"scatter"}
    assert (two.layout.xaxis.title.text, two.layout.yaxis.title.text) == ("accuracy", "size_mb")


def test_hypervolume_plot_shows_the_recorded_history(small_study: Any) -> None:
    from paretune.search._hypervolume import HISTORY_KEY

    study = _study(small_study)
    recorded = study.user_attrs[HISTORY_KEY]
    fig = make_figure(study, "hypervolume")
    assert list(fig.data[0].x) == recorded["trials"]
    assert list(fig.data[0].y) == recorded["values"]


def test_importance_has_one_series_per_objective(small_study: Any) -> None:
    fig = make_figure(_study(small_study), "importance")
    assert [t.name for t in fig.data] == ["accuracy", "trainable_params", "latency_ms"]
    knobs = set(fig.data[0].y)
    assert "train.lr" in knobs and "peft.method" in knobs
    one = make_figure(_study(small_study), "importance", ["train_time_s"])
    assert [t.name for t in one.data] == ["train_time_s"]


def test_history_has_one_panel_per_objective(small_study: Any) -> None:
    fig = make_figure(_study(small_study), "history")
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["accuracy", "trainable_params", "latency_ms"]
    assert len(fig.data) == 6  # values and the best so far, per objective


@pytest.mark.parametrize(
    "kind, targets, message",
    [
        ("pareto", ["accuracy"], "a pareto plot shows 2 or 3 metrics"),
        ("history", ["nope"], "--target 'nope' is not a metric of every completed trial"),
        ("sunburst", [], "--kind must be one of pareto, hypervolume, importance, history"),
    ],
)
def test_bad_plot_requests_are_config_errors(
    small_study: Any, kind: str, targets: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        make_figure(_study(small_study), kind, targets)
    assert message in str(err.value)


def test_unknown_suffix_is_a_config_error(small_study: Any, tmp_path: Path) -> None:
    fig = make_figure(_study(small_study), "history")
    with pytest.raises(ConfigError, match="must end in .html, .png, .pdf, .svg"):
        write_figure(fig, tmp_path / "plot.svgz")
    (tmp_path / "x.png").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        write_plot(_study(small_study), "pareto", [], tmp_path / "x.png")
