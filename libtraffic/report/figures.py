"""Matplotlib figures of an experiment: each draw function takes an Experiment and returns a Figure.

A panel that makes no sense for this experiment (one trial, one parameter, a missing file) raises
``Skip`` with the note the report shows instead. Lines and points carry the data they draw
(labels name trials), so the tests can read a figure back and compare it with the results file.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from libtraffic.report.experiment import Experiment  # noqa: E402
from libtraffic.report.importance import MIN_TRIALS, importance  # noqa: E402

STATUS_STYLE = {"DONE": dict(color="tab:blue", linestyle="-"),
                "STOPPED EARLY": dict(color="tab:orange", linestyle="--"),
                "INTERRUPTED": dict(color="tab:purple", linestyle=":"),  # the run was stopped (Ctrl-C) mid-trial
                "TIME BUDGET": dict(color="tab:brown", linestyle=":")}  # --time_budget_s ended the run mid-trial
BEST_COLOR = "tab:red"
MAX_LEGEND = 12  # trials named in a legend; more would hide the plot
PLOTTED_METRICS = ("MAE", "RMSE", "MAPE")


class Skip(Exception):
    """The panel makes no sense here; ``note`` (or nothing, when None) is shown instead."""

    def __init__(self, note: str | None) -> None:
        super().__init__(note)
        self.note = note


def _figure(width: float = 8, height: float = 4, **kwargs: Any) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(figsize=(width, height), **kwargs)
    return fig, axes


def _spread_log(ax, values: list[float], axis: str = "y") -> None:
    """Log scale when positive values span more than a factor of 20."""
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if len(finite) == len(values) and finite and max(finite) / min(finite) > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def history(exp: Experiment) -> Figure:
    """Best value of the ranking metric (validation loss by default) of each trial in creation order, and
    the running best (cumulative min, or max for R2 / EVAR)."""
    if len(exp.finished) < 2:
        raise Skip("Fewer than two trials reported a validation loss: there is no history to show.")
    order = exp.ordered
    x = np.arange(1, len(order) + 1)
    finished = {id(r) for r in exp.finished}
    losses = np.array([exp.score(r) if id(r) in finished else np.nan for r in order], dtype=float)
    fig, ax = _figure()
    for status, style in STATUS_STYLE.items():
        chosen = [i for i, r in enumerate(order) if r.get("status") == status and np.isfinite(losses[i])]
        if chosen:
            ax.plot(x[chosen], losses[chosen], "o", color=style["color"], label=f"trial ({status.lower()})")
    running = np.fmax if exp.maximised else np.fmin
    ax.plot(x, running.accumulate(losses), drawstyle="steps-post", color=BEST_COLOR, label="running best")
    failed = [i for i, r in enumerate(order) if not np.isfinite(losses[i])]
    if failed:
        ax.plot(x[failed], [np.nanmin(losses)] * len(failed), "x", color="grey", label="failed (no loss)")
    _spread_log(ax, list(losses[np.isfinite(losses)]))
    ax.set(xlabel="trial, in the order it started",
           ylabel=f"best {exp.metric_label}",
           title="Optimisation history")
    ax.xaxis.get_major_locator().set_params(integer=True)  # trials are whole numbers
    ax.legend()
    return fig


def curves(exp: Experiment) -> Figure:
    """The ranking metric (validation loss by default) per epoch of every trial; early-stopped trials are
    dashed and shorter."""
    drawn = [r for r in exp.ordered if exp.curve(r)]
    if not drawn:
        raise Skip("No trial reported an epoch.")
    best_id = exp.best["trial_id"] if exp.best else None
    fig, ax = _figure()
    for r in drawn:
        style = dict(STATUS_STYLE.get(r.get("status"), {"color": "grey", "linestyle": ":"}))
        if r["trial_id"] == best_id:
            style.update(color=BEST_COLOR, linewidth=2.5, zorder=3)
        ax.plot(np.arange(len(exp.curve(r))), exp.curve(r), marker=".", alpha=0.8,  # epochs from 0, as the logs
                label=str(r["trial_id"]), **style)
    present = {r.get("status") for r in drawn}
    handles = [Line2D([], [], label=s.lower(), **style) for s, style in STATUS_STYLE.items() if s in present]
    handles.append(Line2D([], [], color=BEST_COLOR, linewidth=2.5, label=f"best ({best_id})"))
    _spread_log(ax, [v for r in drawn for v in exp.curve(r)])
    ax.set(xlabel="epoch (from 0, as in the logs)", ylabel=exp.metric_label, title="Learning curves of every trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(handles=handles)
    return fig


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _positions(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers stay; other values (strings, lists) become category positions 0..k-1 with labels."""
    if _numeric(values):
        return [float(v) for v in values], None
    labels = sorted({repr(v) for v in values})
    return [float(labels.index(repr(v))) for v in values], labels


def parameters(exp: Experiment) -> Figure:
    """One axes per tuned parameter: its value against the trial's best validation loss."""
    params = exp.params
    if not exp.finished:
        raise Skip("No trial reported a validation loss.")
    if not params:
        raise Skip("Every finished trial used the same values: there is nothing to compare.")
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    losses = [exp.score(r) for r in exp.finished]
    for ax, param in zip(axes.flat, params):
        x, labels = _positions([r["config"].get(param) for r in exp.finished])
        colors = [STATUS_STYLE.get(r["status"], {}).get("color", "grey") for r in exp.finished]
        colors[0] = BEST_COLOR  # finished trials are best first
        ax.scatter(x, losses, c=colors, s=28, label=param)
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        elif exp.is_log(param):
            ax.set_xscale("log")
        elif all(v.is_integer() for v in x):
            ax.xaxis.get_major_locator().set_params(integer=True)
        _spread_log(ax, losses)
        ax.set(title=param + (" (log axis)" if exp.is_log(param) and labels is None else ""), ylabel=f"best {exp.metric_label}")
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _scaled(values: list[Any], log: bool) -> tuple[np.ndarray, str, str]:
    """Values mapped to [0, 1] (log10 first on a log axis), with labels for both ends."""
    x, labels = _positions(values)
    arr = np.log10(x) if log and labels is None else np.asarray(x)
    low, high = float(arr.min()), float(arr.max())
    scaled = (arr - low) / (high - low) if high > low else np.full(len(arr), 0.5)
    if labels is not None:
        return scaled, labels[0], labels[-1]
    return scaled, f"{min(x):.3g}", f"{max(x):.3g}"


def parallel(exp: Experiment) -> Figure:
    """Parallel coordinates: one vertical axis per tuned parameter plus the loss; lines coloured by loss."""
    params = exp.params
    if len(params) < 2 or len(exp.finished) < 2:
        raise Skip("Parallel coordinates need at least two tuned parameters and two finished trials "
                   "(the per-parameter panel shows the rest).")
    trials = exp.finished[::-1]  # worst first, so the best lines are drawn on top
    losses = np.array([exp.score(r) for r in trials])
    columns = [_scaled([r["config"].get(p) for r in trials], exp.is_log(p)) for p in params]
    columns.append(_scaled(list(losses), False))
    names = [*params, f"best {exp.metric_label}"]
    norm = matplotlib.colors.Normalize(losses.min(), losses.max())
    cmap = matplotlib.colormaps["viridis" if exp.maximised else "viridis_r"]
    fig, ax = _figure(max(8, 1.6 * len(names)), 4.5)
    data = np.stack([col[0] for col in columns], axis=1)
    for r, row, loss in zip(trials, data, losses):
        ax.plot(range(len(names)), row, color=cmap(norm(loss)), alpha=0.85, label=str(r["trial_id"]))
    for i, (_, low, high) in enumerate(columns):
        ax.axvline(i, color="black", linewidth=0.8)
        ax.text(i, -0.04, low, ha="center", va="top", fontsize=8)
        ax.text(i, 1.04, high, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), [n + (" (log)" if n in params and exp.is_log(n) else "") for n in names],
                  rotation=15)
    ax.set_ylim(-0.15, 1.15)
    ax.set_yticks([])
    for side in ("top", "bottom", "left", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Parallel coordinates (colour: best {exp.metric_label})", pad=24)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {exp.metric_label}")
    return fig


def importances(exp: Experiment) -> Figure:
    """Bar chart of fANOVA parameter importances (they sum to 1)."""
    if len(exp.params) < 2:
        raise Skip("Importance needs at least two tuned parameters that varied.")
    if len(exp.finished) < MIN_TRIALS:
        raise Skip(f"Importance needs at least {MIN_TRIALS} finished trials; this experiment has "
                   f"{len(exp.finished)}.")
    scores = importance(exp)
    names = list(scores)[::-1]  # largest on top
    fig, ax = _figure(7, 0.5 * len(names) + 1.5)
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    for i, name in enumerate(names):
        ax.text(scores[name], i, f" {scores[name]:.2f}", va="center")
    ax.set(xlabel=f"share of the variance of the best {exp.metric_label}", xlim=(0, 1.1),
           title="Parameter importance (fANOVA)")
    fig.tight_layout()
    return fig


def plotted_metrics(exp: Experiment) -> dict[str, str]:
    """Plot label -> csv column: the masked metric when the evaluator wrote it."""
    columns = list(exp.metrics.columns)
    chosen = {}
    for name in PLOTTED_METRICS:
        for column in (f"masked_{name}", name):
            if column in columns:
                chosen[name] = column
                break
    return chosen


def horizon_metrics(exp: Experiment) -> Figure:
    """MAE and RMSE (left axis) and MAPE in % (right axis) against minutes ahead."""
    if exp.metrics is None:
        raise Skip("No test-metrics file: the best model was not evaluated.")
    chosen = plotted_metrics(exp)
    if not chosen:
        raise Skip(f"The metrics file has none of {', '.join(PLOTTED_METRICS)}.")
    minutes = np.asarray(exp.metrics.index, dtype=float) * exp.time_intervals / 60
    fig, ax = _figure()
    for name, column in chosen.items():
        if name == "MAPE":
            right = ax.twinx()
            right.plot(minutes, exp.metrics[column] * 100, "s--", color="tab:green", label=f"{column} (%, right)")
            right.set_ylabel(f"{column} (%)")
            right.legend(loc="lower right")
        else:
            ax.plot(minutes, exp.metrics[column], "o-", label=column)
    ax.set(xlabel="minutes ahead", ylabel="error (data units)", title="Test error per horizon (best model)")
    ax.legend(loc="upper left")
    return fig


def chosen_sensors(errors: np.ndarray, count: int = 3) -> list[int]:
    """Sensors with the lowest, median and highest error (fewer when there are fewer sensors)."""
    order = np.argsort(errors, kind="stable")
    picks = [order[0], order[len(order) // 2], order[-1]] if count == 3 else list(order[:count])
    return list(dict.fromkeys(int(i) for i in picks))


def _sensor_name(exp: Experiment, node: int) -> str:
    """'sensor 773869' (its geo_id) when the dataset's .geo matches the predictions, else 'sensor index 3'."""
    ids = exp.geo_ids
    if ids is not None and exp.predictions is not None and len(ids) == exp.predictions.truth.shape[2]:
        return f"sensor {ids[node]}"
    return f"sensor index {node}"


def predictions(exp: Experiment) -> Figure:
    """True vs predicted first feature over (up to) one day of the test split for three sensors;
    true zeros are missing readings (as for the masked metrics) and are left as gaps."""
    if exp.predictions is None:
        raise Skip("No predictions file (*_predictions.npz) in evaluate_cache: nothing to compare.")
    pred = exp.predictions.prediction
    truth = np.where(exp.predictions.truth == 0, np.nan, exp.predictions.truth)  # 0 = missing, as masked metrics
    steps = min(len(truth), max(1, 86400 // exp.time_intervals))
    horizon = pred.shape[1]
    with np.errstate(all="ignore"):
        errors = np.nanmean(np.abs(pred[:steps, 0, :, 0] - truth[:steps, 0, :, 0]), axis=0)
    errors = np.nan_to_num(errors, nan=np.inf)  # a sensor missing all day ranks last
    sensors = chosen_sensors(errors)
    hours = np.arange(steps) * exp.time_intervals / 3600
    fig, axes = plt.subplots(len(sensors), 1, figsize=(9, 2.4 * len(sensors)), sharex=True, squeeze=False)
    for ax, node in zip(axes[:, 0], sensors):
        ax.plot(hours, truth[:steps, 0, node, 0], color="black", linewidth=1.2, label="true")
        ax.plot(hours, pred[:steps, 0, node, 0], color="tab:blue", linewidth=1,
                label=f"predicted {exp.time_intervals // 60} min ahead")
        if horizon > 1 and steps > horizon:
            late = np.full(steps, np.nan)  # sample s predicts step s + horizon - 1 at its last horizon
            late[horizon - 1:] = pred[: steps - horizon + 1, horizon - 1, node, 0]
            ax.plot(hours, late, color="tab:orange", linewidth=1,
                    label=f"predicted {horizon * exp.time_intervals // 60} min ahead")
        ax.set_title(f"{_sensor_name(exp, node)} (1-step MAE {errors[node]:.3g})", fontsize=10)
        ax.set_ylabel("value")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel(f"hours since the start of the test split ({steps} steps)")
    fig.tight_layout()
    return fig
