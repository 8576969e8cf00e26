"""Plots of a stored study through ``optuna.visualization``, written as PNG or HTML.

Kinds: ``pareto`` (2-D or 3-D front, infeasible trials greyed), ``hypervolume`` (the history
the engine recorded), ``importance`` (knob importance per objective or metric), ``history``
(each objective or metric per trial). Metrics that are not objectives (any trial user
attribute the objectives registry measured) can be plotted with ``targets``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretune.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

__all__ = ["KINDS", "make_figure", "write_figure"]

KINDS = ("pareto", "hypervolume", "importance", "history")
SUFFIXES = (".png", ".html")


def _objectives(study: optuna.Study) -> list[str]:
    names = study.metric_names or list(study.user_attrs.get("paretune.objectives", {}))
    return names or [f"objective {i}" for i in range(len(study.directions))]


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _getter(study: optuna.Study, name: str) -> Callable[[optuna.trial.FrozenTrial], float]:
    """Reads metric ``name`` of a trial: an objective value, or a recorded metric."""
    objectives = _objectives(study)
    if name in objectives:
        index = objectives.index(name)
        return lambda t: float(t.values[index])
    done = _completed(study)
    have = [t for t in done if isinstance(t.user_attrs.get(name), (int, float))]
    if not done or len(have) < len(done):
        known = sorted(
            {k for t in done for k, v in t.user_attrs.items() if isinstance(v, (int, float))}
            - {"feasible"}
            | set(objectives)
        )
        raise ConfigError(
            f"--target {name!r} is not a metric of every completed trial of "
            f"{study.study_name!r}; metrics: {', '.join(known) or 'none (no completed trial)'}."
        )
    return lambda t: float(t.user_attrs[name])


def _direction(study: optuna.Study, name: str) -> str:
    objectives = _objectives(study)
    if name in objectives:
        return study.directions[objectives.index(name)].name.lower()
    from paretune.objectives import get_objective

    try:
        return get_objective(name).direction
    except KeyError:
        return "minimize"


def _signed(
    get: Callable[[optuna.trial.FrozenTrial], float], sign: float
) -> Callable[[optuna.trial.FrozenTrial], float]:
    return lambda t: sign * get(t)


def _constraints(t: optuna.trial.FrozenTrial) -> list[float]:
    return [float(c) for c in t.user_attrs.get("constraints", [])]


def _pareto(study: optuna.Study, targets: Sequence[str]) -> go.Figure:
    from optuna.visualization import plot_pareto_front

    names = list(targets) or _objectives(study)
    if not 2 <= len(names) <= 3:
        raise ConfigError(
            f"a pareto plot shows 2 or 3 metrics, but study {study.study_name!r} has "
            f"{len(names)} ({', '.join(names)}); pick them with --target, e.g. "
            f"--target {names[0]} --target {names[-1]}."
        )
    getters = [_getter(study, n) for n in names]
    kwargs: dict[str, Any] = {}
    if any("constraints" in t.user_attrs for t in _completed(study)):
        # paretune keeps constraints as user attrs (samplers like random never copy them
        # to the system attrs optuna reads), so infeasible trials are marked through this
        kwargs["constraints_func"] = _constraints
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # constraints_func is deprecated
        fig = plot_pareto_front(
            study,
            target_names=names,
            targets=(lambda t: [g(t) for g in getters]) if targets else None,
            **kwargs,
        )
    fig.update_layout(title=f"Pareto front of {study.study_name}")
    return fig


def _hypervolume(study: optuna.Study) -> go.Figure:
    import plotly.graph_objects as go

    from paretune.search._hypervolume import (
        HISTORY_KEY,
        _completed,
        _directions,
        hypervolume_history,
        reference_point,
    )

    if len(study.directions) < 2:
        raise ConfigError("a hypervolume plot needs 2 or more objectives; use --kind history.")
    history = study.user_attrs.get(HISTORY_KEY)
    if not history or history.get("reference_point") is None:
        # a study the engine did not record (made elsewhere): compute it, write nothing
        trials, ref = _completed(study), reference_point(study)
        if ref is None:
            raise ConfigError(f"study {study.study_name!r} has no completed feasible trial.")
        values = hypervolume_history(trials, _directions(study), ref)
        history = {"reference_point": ref, "trials": [t.number for t in trials], "values": values}
    ref_text = ", ".join(
        f"{n}={v:.4g}" for n, v in zip(_objectives(study), history["reference_point"])
    )
    return go.Figure(
        data=go.Scatter(x=history["trials"], y=history["values"], mode="lines+markers"),
        layout=go.Layout(
            title=f"Hypervolume history of {study.study_name} (reference point {ref_text})",
            xaxis={"title": "Trial (in completion order)"},
            yaxis={"title": "Hypervolume"},
        ),
    )


def _importance(study: optuna.Study, targets: Sequence[str]) -> go.Figure:
    from optuna.visualization import plot_param_importances

    if len(_completed(study)) < 2:
        raise ConfigError("knob importance needs at least 2 completed trials.")
    figs = []
    for name in list(targets) or _objectives(study):
        # PED-ANOVA rates knobs by how they reach LOW target values: flip what is maximized
        sign = -1.0 if _direction(study, name) == "maximize" else 1.0
        target = _signed(_getter(study, name), sign)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            figs.append(plot_param_importances(study, target=target, target_name=name))
    for other in figs[1:]:
        figs[0].add_traces(list(other.data))
    figs[0].update_layout(title=f"Knob importance per objective in {study.study_name}")
    return figs[0]


def _history(study: optuna.Study, targets: Sequence[str]) -> go.Figure:
    from optuna.visualization import plot_optimization_history
    from plotly.subplots import make_subplots

    names = list(targets) or _objectives(study)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names)
    for row, name in enumerate(names, start=1):
        one = plot_optimization_history(study, target=_getter(study, name), target_name=name)
        for trace in one.data:
            trace.legendgroup = name
            trace.name = f"{name}: {trace.name}"
            fig.add_trace(trace, row=row, col=1)
    fig.update_layout(
        title=f"Optimization history of {study.study_name}", height=320 * len(names) + 80
    )
    fig.update_xaxes(title_text="Trial", row=len(names), col=1)
    return fig


def make_figure(study: optuna.Study, kind: str, targets: Sequence[str] = ()) -> go.Figure:
    """The plotly figure of one ``kind`` (see KINDS) for ``study``."""
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, but got {kind!r}.")
    if not _completed(study):
        raise ConfigError(f"study {study.study_name!r} has no completed trial to plot yet.")
    if kind == "pareto":
        return _pareto(study, targets)
    if kind == "hypervolume":
        return _hypervolume(study)
    if kind == "importance":
        return _importance(study, targets)
    return _history(study, targets)


def write_figure(fig: Any, path: str | Path) -> None:
    """``.html`` (self-contained, works offline) or ``.png`` (kaleido + Chrome/Chromium)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"-o {str(path)!r} must end in .png or .html.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        fig.write_html(path, include_plotlyjs=True, full_html=True)
        return
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ConfigError(
            "writing .png needs kaleido: pip install kaleido (it drives a Chrome or Chromium "
            "browser); or write .html."
        ) from None
    try:
        fig.write_image(path, format="png", width=1000, height=max(600, fig.layout.height or 0))
    except Exception as exc:  # kaleido's browser could not start, most often
        raise ConfigError(
            f"kaleido could not render {str(path)!r} ({type(exc).__name__}: {exc}); it needs "
            "Chrome or Chromium (apt-get install chromium, or plotly_get_chrome); or write .html."
        ) from None
