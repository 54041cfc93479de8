"""End of a tuning run: trial table, best trial, best model and config, test metrics, results files, report."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import pandas as pd

from libtraffic.pipeline.build import build_run
from libtraffic.report import write_report
from libtraffic.results import TrialRecord, best_config_path, write_results
from libtraffic.tune.context import TuneRun, trial_config
from libtraffic.tune.final_runs import summary
from libtraffic.tune.progress import metric_label
from libtraffic.tune.records import collect_records
from libtraffic.tune.records import trial_id as record_id
from libtraffic.tune.trial import load_checkpoint
from libtraffic.utils import paths
from libtraffic.utils.safe_write import write_json


class TuningFailed(Exception):
    """Every trial failed; the message summarises their errors (exit code 1)."""


def format_trials(records: list[TrialRecord], params: list[str]) -> str:
    """The final table; its columns are named as in the per-trial lines and, with --verbose, Ray's table."""
    several_nodes = len({r.node for r in records if r.node}) > 1
    loss = metric_label("loss") if records and records[0].metric == "loss" else "val loss at best epoch"
    rows = [{"trial": r.trial_id, **{p: r.config.get(p) for p in params}, "epochs": r.epochs_run,
             "best epoch": r.best_epoch, loss: round(r.best_loss, 4),
             **({} if r.metric == "loss" else {metric_label(r.metric): round(r.best_value, 4)}), "status": r.status,
             **({"node": r.node[:8]} if several_nodes else {})} for r in records]
    table = pd.DataFrame(rows)
    if len(table):
        table["best epoch"] = table["best epoch"].astype("Int64")  # whole numbers, <NA> for a trial without epochs
    return table.to_string(index=False)


def _best_state(run: TuneRun, results, trial_id: str) -> dict[str, Any]:
    """The best checkpoint of trial ``trial_id``, read from the storage path (local, shared or a URI),
    whichever node wrote it."""
    best = run.ranking
    for result in results:
        if record_id(result) == trial_id:
            checkpoint = result.get_best_checkpoint(best.name, best.mode) or result.checkpoint
            run.logger.info("Best checkpoint: %s", checkpoint.path)
            with checkpoint.as_directory() as folder:
                return load_checkpoint(folder)
    raise KeyError(trial_id)


def best_config(run: TuneRun, best: TrialRecord) -> dict[str, Any]:
    """The user's fixed settings plus the best sampled values, the trial seed and (when not the loss) the
    metric that chose the best epoch, so run_model.py --config_file keeps the same epoch."""
    config = run.config
    user = {k: config[k] for k, source in config.sources.items()
            if (source == "command line" or source.startswith("config file"))
            and k not in ("task", "model", "dataset", "exp_id", "dataset_class", "executor", "evaluator")}
    return {**user, **best.config, "seed": best.seed, **({} if best.metric == "loss" else {"best_metric": best.metric})}


def save_interrupted(run: TuneRun, records: list[TrialRecord], finals: list[dict[str, Any]] | None = None) -> None:
    """The results files of an interrupted run (the trials so far, and the final runs that finished), so that
    python -m libtraffic.report can draw them; a --resume rewrites them at its end."""
    _, json_path = write_results(run.folder, records, finals, interrupted=True)
    print(f"\nThe trials so far: {json_path} (draw them with: python -m libtraffic.report --exp_id {run.exp_id})",
          flush=True)


def write_report_safely(exp_id: str | int, logger: logging.Logger) -> None:
    """Write the HTML report and print its path; a failure is logged and reported, never raised,
    because the results files it draws from are already saved."""
    try:
        path = write_report(exp_id)
    except Exception as err:  # noqa: BLE001 - a drawing bug must not turn a finished search into a failure
        logger.exception("Could not write the tuning report")
        print(f"The tuning report could not be written ({type(err).__name__}: {err}); every result above is "
              f"saved. Retry with: python -m libtraffic.report --exp_id {exp_id}")
        return
    print(f"Tuning report: {path}")


def _print_best(best: TrialRecord) -> None:
    """LibCity's line for the loss; the ranking metric's name and value otherwise."""
    # Epochs count from 0, as the log's lines do: "epoch 5 of epochs 0-8" is the sixth of nine.
    where = f"epoch {best.best_epoch} of epochs 0-{best.epochs_run - 1}, the trial's best epoch and the model kept"
    if best.metric == "loss":
        print(f"Best trial final validation loss: {best.best_loss}")
        # LibCity's line above reported the trial's last epoch; ours is its best epoch, the model kept.
        print(f"(validation loss of {where}; LibCity printed the last epoch's)")
        return
    print(f"Best trial validation {best.metric} (--metric, ranks the trials): {best.best_value}")
    print(f"({where}, chosen by {best.metric}; its validation loss: {best.best_loss})")


def _budget_note(run: TuneRun, records: list[TrialRecord]) -> str:
    """What --time_budget_s cut, when it ended the run ('' otherwise)."""
    if not run.budget_spent:
        return ""
    cut = sum(r.status == "TIME BUDGET" for r in records)
    waiting = sum(r.status == "NOT STARTED" for r in records)
    planned = run.expected_trials
    return (f"\nThe run was stopped by --time_budget_s {run.options.time_budget_s:g}: {cut} trial(s) stopped mid-way "
            f"(status TIME BUDGET), {waiting} not started, {max(planned - len(records), 0)} of the {planned} planned "
            "never created.")


def finish(run: TuneRun, results, fit_seconds: float, finals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Print and save everything a finished search leaves; returns the best trial's summary."""
    config = run.config
    records = collect_records(results, run.ranking, run.budget_spent)
    csv_path, json_path = write_results(run.folder, records, finals)
    print("\nAll trials, best first:\n" + format_trials(records, list(run.space.entries)))
    for r in records:
        if r.error:
            print(f"Trial {r.trial_id} failed: {r.error}")
    budget = _budget_note(run, records)
    if budget:
        print(budget)
    finished = [r for r in records if r.finished]
    if not finished:
        if budget:
            raise TuningFailed(f"No trial finished an epoch within --time_budget_s {run.options.time_budget_s:g}: give "
                               f"the search more time. Results: {csv_path}")
        raise TuningFailed(f"All {len(records)} trials failed; see the errors above and the log. Results: {csv_path}")
    best = finished[0]
    print(f"\n{len(records)} trials in {fit_seconds:.1f} s of tuning.")
    print(f"Best trial config: {best.config}")
    _print_best(best)
    run.logger.info("Best trial %s (seed %s, epoch %s): config %s, validation loss %s, %s %s", best.trial_id,
                    best.seed, best.best_epoch, best.config, best.best_loss, best.metric, best.best_value)
    state = _best_state(run, results, best.trial_id)
    built = build_run(trial_config(config, best.config, best.seed), run.shared, run.logger)
    built.executor.model.load_state_dict(state["model_state_dict"])
    model_file = paths.model_cache_file(run.exp_id, config["model"], config["dataset"])
    built.executor.save_model(model_file, state)
    best_file = best_config_path(run.folder, config["model"], config["dataset"])
    write_json(best_file, best_config(run, best))
    test_result = built.executor.evaluate(built.test_data)
    print(f"Best model: {model_file}\nBest config (for run_model.py --config_file): {best_file}\n"
          f"All trials: {csv_path} and {json_path.name}")
    if finals:
        print("\nBest configuration(s) retrained with fresh seeds: test metrics per horizon, mean ± std over the runs\n"
              + summary(finals))
    write_report_safely(run.exp_id, run.logger)
    return {"trial_id": best.trial_id, "config": best.config, "loss": best.best_loss, "seed": best.seed,
            "metric": best.metric, "best_value": best.best_value, "best_epoch": best.best_epoch,
            "test": test_result, "model_file": str(model_file), "config_file": str(best_file),
            "fit_seconds": fit_seconds, "trials": [asdict(r) for r in records], "final_seeds": finals or []}
