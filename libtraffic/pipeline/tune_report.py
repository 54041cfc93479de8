"""End of a tuning run: trial table, best trial, best model and config, test metrics, results files."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.prepared import PreparedData, RawData, prepared_for
from libtraffic.executor import get_executor
from libtraffic.executor.best_metric import BY_LOSS, LOSS, BestMetric, parse_best_metric
from libtraffic.model import get_model
from libtraffic.pipeline.search_space import SearchSpace
from libtraffic.pipeline.trial import CHECKPOINT_FILE, trial_config
from libtraffic.utils import paths
from libtraffic.utils.jsonio import write_json


class TuningFailed(Exception):
    """Every trial failed; the message summarises their errors (exit code 1)."""


@dataclass
class TrialRecord:
    trial_id: str
    config: dict[str, Any]
    seed: int | None
    status: str
    epochs_run: int
    best_epoch: int | None  # the epoch with the best `metric`
    best_loss: float  # the validation loss of best_epoch
    loss_curve: list[float] = field(default_factory=list)
    metric: str = LOSS  # what ranks trials (--metric)
    metric_mode: str = "min"  # "max" when higher is better (R2, EVAR)
    best_value: float = math.nan  # `metric` at best_epoch
    metric_curve: list[float] = field(default_factory=list)  # `metric` per epoch
    epoch_seconds: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    error: str = ""
    node: str = ""  # Ray node ID the trial last ran on (`ray list nodes`)
    started: float | None = None  # when the trial first started (unix seconds); None: it never ran


def progress_reporter(space: SearchSpace, metric: str = LOSS):
    from ray.tune import CLIReporter

    chosen = {} if metric == LOSS else {metric: metric, "best_value": f"best {metric}"}
    return CLIReporter(parameter_columns=list(space.entries),
                       metric_columns={"epoch": "epoch", "loss": "loss", "best_loss": "best loss", **chosen},
                       max_report_frequency=30, sort_by_metric=True)


def _plain(value: Any) -> Any:
    """NumPy scalars (from HyperOpt/BayesOpt) as plain Python numbers, for printing and JSON."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


def error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # Ray wraps the trial's exception; its last line is "ExcType: message".
    return lines[-1] if lines else type(error).__name__


def _ranked(records: list[TrialRecord], metric: BestMetric) -> list[TrialRecord]:
    """Best first by the metric (lowest, or highest for R2 / EVAR); trials without a value last."""
    sign = -1.0 if metric.mode == "max" else 1.0
    return sorted(records, key=lambda r: (math.isnan(r.best_value), sign * r.best_value if not math.isnan(r.best_value) else 0.0))


#: Ray's states of a trial that has not ended: in an interrupted (or time-budgeted) run.
_NOT_ENDED = ("PENDING", "RUNNING", "PAUSED")


def _ray_states(results) -> dict[str, str]:
    """Ray's state of each trial (TERMINATED, ERROR, PENDING, RUNNING, PAUSED) by trial folder, read back
    from the experiment's saved state (Ray's Result objects do not carry it)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem)
    return {trial.path: trial.status for trial in analysis.trials}


def _status(result, epochs: int, max_epoch: int, state: str) -> str:
    """DONE, STOPPED EARLY (by the scheduler or early stopping), ERROR; for a trial that had not ended when
    the run stopped: INTERRUPTED (it has epochs) or NOT STARTED."""
    if result.error:
        return "ERROR"
    if state in _NOT_ENDED:
        return "INTERRUPTED" if epochs else "NOT STARTED"
    return "DONE" if epochs >= max_epoch else "STOPPED EARLY"


def collect_records(results, metric: BestMetric = BY_LOSS) -> list[TrialRecord]:
    """One record per trial, ranked by ``metric``; each trial's best epoch is its best by ``metric``."""
    records = []
    states = _ray_states(results)
    for result in results:
        df = result.metrics_dataframe
        has_rows = df is not None and len(df) and "loss" in df and metric.name in df
        if has_rows:  # a resumed trial may repeat the epochs after its checkpoint: keep the last run
            df = df.drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
        losses = [float(x) for x in df["loss"]] if has_rows else []
        values = [float(x) for x in df[metric.name]] if has_rows else []
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
        pick = max if metric.mode == "max" else min
        best_i = pick(range(len(values)), key=values.__getitem__) if values else None
        max_epoch = int(df["max_epoch"].iloc[-1]) if has_rows else 0
        status = _status(result, len(losses), max_epoch, states.get(result.path, "TERMINATED"))
        records.append(TrialRecord(
            trial_id=trial_id, config={k: _plain(v) for k, v in result.config.items()}, status=status,
            seed=int(df["trial_seed"].iloc[0]) if has_rows else None, epochs_run=len(losses),
            best_epoch=int(df["epoch"].iloc[best_i]) if best_i is not None else None,
            best_loss=losses[best_i] if best_i is not None else math.nan, loss_curve=losses, metric=metric.name,
            metric_mode=metric.mode, best_value=values[best_i] if best_i is not None else math.nan, metric_curve=values,
            epoch_seconds=[float(x) for x in df["epoch_time"]] if has_rows else [],
            wall_time_s=float(df["time_total_s"].iloc[-1]) if has_rows else 0.0, error=error_text(result.error),
            node=str(df["node"].iloc[-1]) if has_rows and "node" in df else "",
            started=float(df["started"].min()) if has_rows and "started" in df else None,
        ))
    return _ranked(records, metric)


def format_trials(records: list[TrialRecord], params: list[str]) -> str:
    several_nodes = len({r.node for r in records}) > 1
    rows = [{"trial": r.trial_id, **{p: r.config.get(p) for p in params}, "epochs": r.epochs_run,
             "best epoch": r.best_epoch, "best val loss": round(r.best_loss, 4),
             **({} if r.metric == LOSS else {f"best val {r.metric}": round(r.best_value, 4)}), "status": r.status,
             **({"node": r.node[:8]} if several_nodes else {})} for r in records]
    return pd.DataFrame(rows).to_string(index=False)


def write_results(records: list[TrialRecord], folder: Path, finals: list[dict[str, Any]] | None = None,
                  interrupted: bool = False) -> list[Path]:
    """The results json (a list of trial records; with --final_seeds {"trials": [...], "final_seeds": [...]};
    an interrupted run's {"trials": [...], "final_seeds": [...], "interrupted": true}) and csv (one row per trial)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / "hyper_tune_results.json", folder / "hyper_tune_results.csv"
    trials = [asdict(r) for r in records]
    if interrupted:
        write_json(json_path, {"trials": trials, "final_seeds": finals or [], "interrupted": True})
    else:
        write_json(json_path, {"trials": trials, "final_seeds": finals} if finals else trials)
    curves = ("loss_curve", "metric_curve", "epoch_seconds")
    rows = [{**{k: v for k, v in asdict(r).items() if k != "config" and k not in curves},
             **{f"config.{k}": v for k, v in r.config.items()}, **{k: json.dumps(getattr(r, k)) for k in curves}}
            for r in records]
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return [csv_path, json_path]


def _best_state(results, trial_id: str, metric: BestMetric, logger: logging.Logger) -> dict[str, Any]:
    """The best checkpoint of trial ``trial_id``, read from the storage path (local, shared or a URI),
    whichever node wrote it."""
    for result in results:
        if str((result.metrics or {}).get("trial_id")) == trial_id:
            checkpoint = result.get_best_checkpoint(metric.name, metric.mode) or result.checkpoint
            logger.info("Best checkpoint: %s", checkpoint.path)
            with checkpoint.as_directory() as folder:
                return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    raise KeyError(trial_id)


def best_config_file(config: ConfigParser, best: TrialRecord) -> dict[str, Any]:
    """The user's fixed settings plus the best sampled values, the trial seed and (when not the loss) the
    metric that chose the best epoch, so run_model.py --config_file keeps the same epoch."""
    user = {k: config[k] for k, source in config.sources.items()
            if (source == "command line" or source.startswith("config file"))
            and k not in ("task", "model", "dataset", "exp_id", "dataset_class", "executor", "evaluator")}
    return {**user, **best.config, "seed": best.seed, **({} if best.metric == LOSS else {"best_metric": best.metric})}


def save_interrupted(config: ConfigParser, records: list[TrialRecord], finals: list[dict[str, Any]] | None = None) -> None:
    """The results files of an interrupted run (the trials so far, and the final runs that finished), so that
    python -m libtraffic.report can draw them; a --resume rewrites them at its end."""
    written = write_results(records, paths.experiment_dir(config["exp_id"]), finals, interrupted=True)
    print(f"\nThe trials so far: {written[1]} (draw them with: python -m libtraffic.report --exp_id {config['exp_id']})",
          flush=True)


def write_report_safely(exp_id: str | int, logger: logging.Logger) -> None:
    """Write the HTML report and print its path; a failure is logged and reported, never raised,
    because the results files it draws from are already saved."""
    from libtraffic.report import write_report

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
    where = f"epoch {best.best_epoch} of {best.epochs_run}, the trial's best epoch and the model kept"
    if best.metric == LOSS:
        print(f"Best trial final validation loss: {best.best_loss}")
        # LibCity's line above reported the trial's last epoch; ours is its best epoch, the model kept.
        print(f"(validation loss of {where}; LibCity printed the last epoch's)")
        return
    print(f"Best trial validation {best.metric} (--metric, ranks the trials): {best.best_value}")
    print(f"({where}, chosen by {best.metric}; its validation loss: {best.best_loss})")


def finish(config: ConfigParser, space: SearchSpace, results, logger: logging.Logger,
           shared: PreparedData | RawData, fit_seconds: float, finals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metric = parse_best_metric(config["best_metric"], config["output_window"])
    records = collect_records(results, metric)
    folder = paths.experiment_dir(config["exp_id"])
    written = write_results(records, folder, finals)
    params = list(space.entries)
    finished = [r for r in records if r.status != "ERROR" and r.epochs_run]
    print("\nAll trials, best first:\n" + format_trials(records, params))
    for r in records:
        if r.error:
            print(f"Trial {r.trial_id} failed: {r.error}")
    if not finished:
        raise TuningFailed(f"All {len(records)} trials failed; see the errors above and the log. Results: {written[0]}")
    best = finished[0]
    print(f"\n{len(records)} trials in {fit_seconds:.1f} s of tuning.")
    print(f"Best trial config: {best.config}")
    _print_best(best)
    logger.info("Best trial %s (seed %s, epoch %s): config %s, validation loss %s, %s %s", best.trial_id, best.seed,
                best.best_epoch, best.config, best.best_loss, metric.name, best.best_value)
    state = _best_state(results, best.trial_id, metric, logger)
    cfg = trial_config(config, best.config, best.seed)
    dataset = get_dataset(cfg, prepared_for(shared, cfg))
    _, _, test_data = dataset.get_data()
    data_feature = dataset.get_data_feature()
    executor = get_executor(cfg, get_model(cfg, data_feature), data_feature, logger)
    executor.model.load_state_dict(state["model_state_dict"])
    model_file = paths.model_cache_file(config["exp_id"], config["model"], config["dataset"])
    executor.save_model(model_file, state)
    best_file = folder / f"{config['model']}_{config['dataset']}_best_config.json"
    write_json(best_file, best_config_file(config, best))
    test_result = executor.evaluate(test_data)
    print(f"Best model: {model_file}\nBest config (for run_model.py --config_file): {best_file}\n"
          f"All trials: {written[0]} and {written[1].name}")
    if finals:
        from libtraffic.pipeline.final_seeds import summary

        print("\nBest configuration(s) retrained with fresh seeds: test metrics per horizon, mean ± std over the runs\n"
              + summary(finals))
    write_report_safely(config["exp_id"], logger)
    return {"trial_id": best.trial_id, "config": best.config, "loss": best.best_loss, "seed": best.seed,
            "metric": metric.name, "best_value": best.best_value, "best_epoch": best.best_epoch,
            "test": test_result, "model_file": str(model_file), "config_file": str(best_file),
            "fit_seconds": fit_seconds, "trials": [asdict(r) for r in records], "final_seeds": finals or []}
