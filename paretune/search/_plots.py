"""Plots of a stored study: HTML through ``optuna.visualization`` (plotly), PNG, PDF and
SVG through its matplotlib backend (``optuna.visualization.matplotlib``), so no browser is
needed for an image.

Kinds: ``pareto`` (2-D or 3-D front, infeasible trials greyed), ``hypervolume`` (the history
the engine recorded), ``importance`` (knob importance per objective or metric), ``history``
(each objective or metric per trial, with the best value so far). Metrics that are not
objectives (any trial user attribute the objectives registry measured) can be plotted with
``targets``.
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

__all__ = ["KINDS", "SUFFIXES", "make_figure", "make_static", "write_figure", "write_plot"]

KINDS = ("pareto", "hypervolume", "importance", "history")
STATIC = (".png", ".pdf", ".svg")
SUFFIXES = (".html", *STATIC)


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


def _pareto_args(study: optuna.Study, targets: Sequence[str]) -> dict[str, Any]:
    """``plot_pareto_front`` arguments, the same for both backends. Infeasible trials are
    greyed by Optuna itself: it reads the constraint values the engine records."""
    names = list(targets) or _objectives(study)
    if not 2 <= len(names) <= 3:
        raise ConfigError(
            f"a pareto plot shows 2 or 3 metrics, but study {study.study_name!r} has "
            f"{len(names)} ({', '.join(names)}); pick them with --target, e.g. "
            f"--target {names[0]} --target {names[-1]}."
        )
    getters = [_getter(study, n) for n in names]
    return {"target_names": names,
            "targets": (lambda t: [g(t) for g in getters]) if targets else None}


def _pareto(study: optuna.Study, targets: Sequence[str]) -> go.Figure:
    from optuna.visualization import plot_pareto_front

    fig = plot_pareto_front(study, **_pareto_args(study, targets))
    fig.update_layout(title=f"Pareto front of {study.study_name}")
    return fig


def _hypervolume_history(study: optuna.Study) -> tuple[dict[str, Any], str]:
    """The recorded history (or one computed for a study the engine did not record), and
    its reference point as text."""
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
    return history, ref_text


def _hypervolume(study: optuna.Study) -> go.Figure:
    import plotly.graph_objects as go

    history, ref_text = _hypervolume_history(study)
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


def _history_series(
    study: optuna.Study, name: str
) -> tuple[list[int], list[float], list[int], list[float]]:
    """Each completed trial's value of ``name`` (trial numbers, values), and the best value
    so far among the feasible ones, in its direction."""
    get, sign = _getter(study, name), (1 if _direction(study, name) == "maximize" else -1)
    numbers, values, best_numbers, best = [], [], [], []  # type: ignore[var-annotated]
    for t in sorted(_completed(study), key=lambda t: t.number):
        numbers.append(t.number)
        values.append(get(t))
        if t.user_attrs.get("feasible", True):
            so_far = values[-1] if not best else sign * max(sign * best[-1], sign * values[-1])
            best_numbers.append(t.number)
            best.append(so_far)
    return numbers, values, best_numbers, best


def _history(study: optuna.Study, targets: Sequence[str]) -> go.Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(targets) or _objectives(study)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names)
    for row, name in enumerate(names, start=1):
        numbers, values, best_numbers, best = _history_series(study, name)
        fig.add_trace(go.Scatter(x=numbers, y=values, mode="markers", name=f"{name}: value",
                                 legendgroup=name), row=row, col=1)
        fig.add_trace(go.Scatter(x=best_numbers, y=best, mode="lines",
                                 name=f"{name}: best so far", legendgroup=name,
                                 line={"shape": "hv"}), row=row, col=1)
    fig.update_layout(
        title=f"Optimization history of {study.study_name}", height=320 * len(names) + 80
    )
    fig.update_xaxes(title_text="Trial", row=len(names), col=1)
    return fig


def _check(study: optuna.Study, kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, but got {kind!r}.")
    if not _completed(study):
        raise ConfigError(f"study {study.study_name!r} has no completed trial to plot yet.")


def make_figure(study: optuna.Study, kind: str, targets: Sequence[str] = ()) -> go.Figure:
    """The plotly figure of one ``kind`` (see KINDS) for ``study``."""
    _check(study, kind)
    if kind == "pareto":
        return _pareto(study, targets)
    if kind == "hypervolume":
        return _hypervolume(study)
    if kind == "importance":
        return _importance(study, targets)
    return _history(study, targets)


# -- static images: matplotlib, no browser -------------------------------------------------


def make_static(study: optuna.Study, kind: str, targets: Sequence[str] = ()) -> Any:
    """The matplotlib figure of one ``kind``: the same content as ``make_figure``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    _check(study, kind)
    fig: Any
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
        if kind == "pareto":
            from optuna.visualization.matplotlib import plot_pareto_front

            ax = plot_pareto_front(study, **_pareto_args(study, targets))
            ax.set_title(f"Pareto front of {study.study_name}")
            fig = ax.figure
        elif kind == "hypervolume":
            fig = _static_hypervolume(study)
        elif kind == "importance":
            fig = _static_importance(study, targets)
        else:
            fig = _static_history(study, targets)
    fig.set_size_inches(10, max(6.0, fig.get_size_inches()[1]))
    fig.tight_layout()
    return fig


def _static_hypervolume(study: optuna.Study) -> Any:
    import matplotlib.pyplot as plt

    history, ref_text = _hypervolume_history(study)
    fig, ax = plt.subplots()
    ax.plot(history["trials"], history["values"], marker="o")
    ax.set_title(f"Hypervolume history of {study.study_name}\n(reference point {ref_text})")
    ax.set_xlabel("Trial (in completion order)")
    ax.set_ylabel("Hypervolume")
    return fig


def _static_importance(study: optuna.Study, targets: Sequence[str]) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.importance import get_param_importances

    if len(_completed(study)) < 2:
        raise ConfigError("knob importance needs at least 2 completed trials.")
    names = list(targets) or _objectives(study)
    series = {}
    for name in names:  # as _importance: flip what is maximized
        sign = -1.0 if _direction(study, name) == "maximize" else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            series[name] = get_param_importances(study, target=_signed(_getter(study, name), sign))
    knobs = sorted({k for s in series.values() for k in s},
                   key=lambda k: max(s.get(k, 0.0) for s in series.values()))
    fig, ax = plt.subplots(figsize=(10, max(6.0, 0.35 * len(knobs) * len(names))))
    height = 0.8 / len(names)
    for i, (name, values) in enumerate(series.items()):
        ax.barh(np.arange(len(knobs)) + i * height, [values.get(k, 0.0) for k in knobs],
                height=height, label=name)
    ax.set_yticks(np.arange(len(knobs)) + 0.4 - height / 2, knobs)
    ax.set_xlabel("Importance")
    ax.set_title(f"Knob importance per objective in {study.study_name}")
    ax.legend()
    return fig


def _static_history(study: optuna.Study, targets: Sequence[str]) -> Any:
    import matplotlib.pyplot as plt

    names = list(targets) or _objectives(study)
    fig, axes = plt.subplots(len(names), 1, sharex=True, squeeze=False,
                             figsize=(10, 3.2 * len(names) + 0.8))
    for ax, name in zip(axes[:, 0], names):
        numbers, values, best_numbers, best = _history_series(study, name)
        ax.scatter(numbers, values, s=14, label="value")
        ax.step(best_numbers, best, where="post", color="tab:red", label="best so far")
        ax.set_title(name)
        ax.legend(loc="best")
    axes[-1, 0].set_xlabel("Trial")
    fig.suptitle(f"Optimization history of {study.study_name}")
    return fig


def _output(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"-o {str(path)!r} must end in {', '.join(SUFFIXES)}.")
    if path.is_dir():
        raise ConfigError(f"-o {str(path)!r} is a directory; give a file name.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {str(path)!r} cannot be written: {exc.strerror or exc}.") from None
    return path


def write_plot(
    study: optuna.Study, kind: str, targets: Sequence[str], path: str | Path
) -> None:
    """``kind`` of ``study`` into ``path``: ``.html`` through plotly (interactive,
    self-contained), ``.png``/``.pdf``/``.svg`` through matplotlib (no browser)."""
    out = _output(path)
    if out.suffix.lower() == ".html":
        write_figure(make_figure(study, kind, targets), out)
    else:
        write_figure(make_static(study, kind, targets), out)


def write_figure(fig: Any, path: str | Path) -> None:
    """A plotly figure as ``.html``; a matplotlib figure (``make_static``) as an image."""
    out = _output(path)
    suffix = out.suffix.lower()
    try:
        if hasattr(fig, "savefig"):
            if suffix == ".html":
                raise ConfigError(f"-o {str(out)!r}: an image figure cannot be written as "
                                  ".html; use make_figure for HTML.")
            import matplotlib.pyplot as plt

            fig.savefig(out, format=suffix[1:], dpi=100)
            plt.close(fig)
        elif suffix == ".html":
            fig.write_html(out, include_plotlyjs=True, full_html=True)
        else:
            raise ConfigError(f"-o {str(out)!r}: write images from make_static (matplotlib); "
                              "a plotly figure is written as .html.")
    except OSError as exc:
        raise ConfigError(f"-o {str(out)!r} cannot be written: {exc.strerror or exc}.") from None
