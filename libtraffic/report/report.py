"""The tuning report: a table of panels -> PNG files + one self-contained HTML page.

    libtraffic/cache/<exp_id>/hyper_tune_report.html   images embedded (base64), no network needed
    libtraffic/cache/<exp_id>/hyper_tune_report/<panel>.png   the same figures, for papers
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from libtraffic.report import figures, tables
from libtraffic.report.experiment import Experiment, load_experiment
from libtraffic.report.figures import Skip
from libtraffic.report.importance import MIN_TRIALS
from libtraffic.utils.safe_write import write_text
from libtraffic.utils.registry import lookup

REPORT_FILE = "hyper_tune_report.html"
FIGURE_DIR = "hyper_tune_report"
DPI = 100


@dataclass(frozen=True)
class Panel:
    """One report section: a figure and/or an HTML table, and what it shows (HTML text)."""

    title: str
    text: str
    draw: Callable[[Experiment], plt.Figure] | None = None
    table: Callable[[Experiment], str] | None = None


PANELS: dict[str, Panel] = {
    "history": Panel("Optimisation history", "Each trial's best validation loss, in the order the trials started "
                     "(see the note above if unknown), and the running best: the lowest loss found so far.",
                     figures.history),
    "curves": Panel("Learning curves", "Validation loss per epoch of every trial. Early-stopped trials (dashed) "
                    "end sooner; the best trial is drawn thick in red.", figures.curves),
    "parameters": Panel("Tuned parameters", "Each tuned parameter's value against the trial's best validation "
                        "loss (red: the best trial). Log-scale space entries get a log axis.", figures.parameters),
    "parallel": Panel("Parallel coordinates", "One vertical axis per tuned parameter, scaled from its smallest "
                      "to its largest tried value (log scale where the space is), and the loss on the last axis; "
                      "each line is a trial, coloured by its best validation loss (yellow = best). Where the "
                      "yellow lines cross an axis is the good region.", figures.parallel),
    "importance": Panel("Parameter importance (fANOVA)",
                        "fANOVA (Hutter, Hoos and Leyton-Brown, 2014) computed by Optuna's "
                        "FanovaImportanceEvaluator: a random forest is fitted from the tuned parameters to each "
                        "finished trial's best validation loss, and the variance of its predictions is split "
                        "into the part each parameter explains on its own; the bars are those shares, "
                        "normalised to sum to 1. A large share means the loss changed most along that "
                        "parameter within the searched ranges; it says nothing about values outside them. "
                        f"With few trials (at least {MIN_TRIALS} are needed) or many early-stopped ones "
                        "(their loss is from fewer epochs) read it as a hint, not a measurement.",
                        figures.importances),
    "test_metrics": Panel("Test metrics per horizon", "The best model's error on the test split at each "
                          "horizon (masked metrics ignore missing values, as LibCity).",
                          figures.horizon_metrics, tables.metrics_table),
    "predictions": Panel("Predicted vs true", "Up to one day of the test split for the sensors with the "
                         "lowest, median and highest one-step error: the true values, the prediction made one "
                         "step ahead and the one made the full output window ahead. Missing readings (zeros) are gaps.",
                         figures.predictions),
    "final_seeds": Panel("Best configurations retrained with fresh seeds",
                         "Test metrics per horizon as mean ± standard deviation over the seeds: if the tuning "
                         "winner's own test error lies well below this mean, its seed was lucky.",
                         table=tables.final_seeds_table),
}

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
td{font-family:monospace}img{max-width:100%;border:1px solid #eee}.note{color:#8a5300;background:#fff6e5;
padding:6px 10px;border-left:4px solid #f0a020}section{margin-top:2em}"""


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def render_panel(key: str, panel: Panel, exp: Experiment, figure_dir: Path) -> str:
    """The panel's HTML section; its PNG is written (or a stale one removed when it is skipped)."""
    parts, notes = [], []
    png_path = figure_dir / f"{key}.png"
    for part in (panel.draw, panel.table):
        if part is None:
            continue
        try:
            result = part(exp)
        except Skip as skip:
            if skip.note:
                notes.append(skip.note)
            if part is panel.draw:
                png_path.unlink(missing_ok=True)
            continue
        if isinstance(result, str):
            parts.append(result)
        else:
            data = _png(result)
            write_text(png_path, data)
            parts.append(f"<img alt='{html.escape(panel.title)}' src='data:image/png;base64,"
                         f"{base64.b64encode(data).decode('ascii')}'>")
    if not parts and not notes:
        return ""
    body = "".join(_note(n) for n in dict.fromkeys(notes)) + (f"<p>{html.escape(panel.text)}</p>" if parts else "")
    return f"<section id='{key}'><h2>{html.escape(panel.title)}</h2>{body}{''.join(parts)}</section>"


def write_report(exp_id: str | int, panels: list[str] | None = None) -> Path:
    """Write the report of experiment ``exp_id`` (only the named ``panels`` if given); returns the HTML path."""
    chosen = {name: lookup(PANELS, name, "report panel") for name in (panels or PANELS)}
    exp = load_experiment(exp_id)
    figure_dir = exp.folder / FIGURE_DIR
    sections = [render_panel(key, panel, exp, figure_dir) for key, panel in chosen.items()]
    notes = "".join(_note(n) for n in exp.notes)
    title = f"Tuning report: {exp.describe('model')} on {exp.describe('dataset')}, experiment {exp.exp_id}"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<section id='summary'><h2>Experiment</h2>{notes}{tables.definition_list(tables.experiment_facts(exp))}"
            f"<h2>Best trial</h2>{tables.definition_list(tables.best_trial(exp))}</section>"
            f"{''.join(sections)}<p><small>Written {time.strftime('%Y-%m-%d %H:%M:%S')} by "
            f"python -m libtraffic.report --exp_id {html.escape(exp.exp_id)}; figures also in "
            f"{FIGURE_DIR}/.</small></p></body></html>\n")
    path = exp.folder / REPORT_FILE
    write_text(path, page)
    return path
