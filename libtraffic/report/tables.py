"""HTML tables of the report: header facts, best trial, test metrics, final-seeds mean ± std."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from libtraffic.report.experiment import Experiment
from libtraffic.report.figures import PLOTTED_METRICS, Skip


def definition_list(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table class='facts'>{cells}</table>"


def experiment_facts(exp: Experiment) -> dict[str, Any]:
    """The command and the search settings, from the settings file when it exists."""
    s = exp.settings or {}
    facts = {"experiment": exp.exp_id, "command": s.get("command", "unknown (settings file missing)"),
             "task / model / dataset": " / ".join(exp.describe(k) for k in ("task", "model", "dataset")),
             "search algorithm": exp.describe("search_alg"), "scheduler": exp.describe("scheduler"),
             "trials": f"{len(exp.trials)} ({len(exp.finished)} with a {exp.metric_label})",
             "ranked by": exp.metric_label + (" (higher is better)" if exp.maximised else " (lower is better)")}
    for key in ("num_samples", "max_concurrent", "seed", "started"):
        if key in s:
            facts[key.replace("_", " ")] = s[key]
    if exp.space:
        facts["tuned parameters"] = ", ".join(f"{p} ({e['type']})" if "type" in e else p for p, e in exp.space.items())
    return facts


def best_trial(exp: Experiment) -> dict[str, Any]:
    best = exp.best
    if best is None:
        return {"best trial": "none: no trial reported a validation loss"}
    chosen = {} if exp.metric == "loss" else {f"best {exp.metric_label}": f"{exp.score(best):.6g}"}
    return {"best trial": best["trial_id"], "config": best["config"], **chosen,
            "best validation loss": f"{best['best_loss']:.6g}",
            "best epoch": f"{best.get('best_epoch')} of {best.get('epochs_run')} run ({best.get('status')})",
            "trial seed": best.get("seed"), **({"node": best["node"]} if best.get("node") else {}),
            "best-config file": exp.best_config_path.name if exp.best_config_path else "missing"}


def metrics_table(exp: Experiment) -> str:
    """Every metric column of the test-metrics csv, horizons as rows (with minutes ahead)."""
    if exp.metrics is None:
        raise Skip("No test-metrics file.")
    table = exp.metrics.copy()
    minutes = np.asarray(table.index) * exp.time_intervals / 60
    table.insert(0, "minutes ahead", [f"{m:g}" for m in minutes])
    return table.to_html(float_format=lambda v: f"{v:.4f}", classes="metrics", border=0)


def mean_std_frame(entry: dict[str, Any]) -> pd.DataFrame | None:
    """One final-seeds entry's test metrics as 'mean ± std' (std over the runs, ddof 1), horizons as rows and
    the masked MAE / MAPE / RMSE (else the plain ones) as columns; None when no run finished."""
    runs = [run["test"] for run in entry.get("runs", []) if run.get("test")]
    if not runs:
        return None
    frame = pd.DataFrame(runs)
    horizons = sorted({int(k.rsplit("@", 1)[1]) for k in frame.columns if "@" in k})
    names = [m for m in (f"masked_{n}" for n in PLOTTED_METRICS) if f"{m}@1" in frame] or \
            [n for n in PLOTTED_METRICS if f"{n}@1" in frame]
    rows = {h: {m: f"{frame[f'{m}@{h}'].mean():.4f} ± {frame[f'{m}@{h}'].std(ddof=1) if len(frame) > 1 else 0:.4f}"
                for m in names} for h in horizons}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("horizon")


def final_seeds_table(exp: Experiment) -> str:
    """Test metrics of each retrained configuration: mean ± std over its seeds, per horizon."""
    if not exp.final_seeds:
        raise Skip(None)  # the experiment did not retrain: no section, no note
    parts = []
    for entry in exp.final_seeds:
        table = mean_std_frame(entry)
        if table is None:
            continue
        runs = [run for run in entry.get("runs", []) if run.get("test")]
        seeds = ", ".join(str(run.get("seed")) for run in entry.get("runs", []))
        parts.append(f"<h3>{html.escape(str(entry.get('trial_id', '')))}: {html.escape(str(entry.get('config', '')))}"
                     f"</h3><p>{len(runs)} runs, seeds {html.escape(seeds)}</p>" + table.to_html(border=0))
    if not parts:
        raise Skip("The final-seeds block has no finished run.")
    return "".join(parts)
