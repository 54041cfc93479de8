"""hyper_parameter: LibCity's hyper_tune.py on Ray Tune 2.x (Tuner API).

The dataset is prepared once here in the driver (or, when the space tunes data settings, its raw
arrays are read once) and handed to every trial through Ray's object store (tune.with_parameters),
so trials open no file and run on any node of a cluster (ray_session.py). Each trial trains one
sampled configuration (trial.py) and reports its validation loss as ``loss`` (and the --metric
that ranks trials, when it is an evaluator metric) every epoch, so ASHA / MedianStoppingRule can
stop it early by that metric.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.prepared import DATA_KEYS, RAW_KEYS, read_raw
from libtraffic.executor.best_metric import BestMetric, parse_best_metric
from libtraffic.pipeline import dry_run, experiment, final_seeds
from libtraffic.pipeline.pipeline import default_names, claim_new_experiment
from libtraffic.pipeline.optuna_space import optuna_searcher
from libtraffic.pipeline.search_space import DEFAULT_SPACE, SearchSpace, load_search_space
from libtraffic.pipeline.trial import TrialSettings, train_trial, trial_dirname
from libtraffic.pipeline import ray_session, tune_report
from libtraffic.utils import experiment_lock, paths
from libtraffic.utils.device import set_threads
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.logger import get_logger
from libtraffic.utils.registry import lookup


def _limited(searcher, max_concurrent: int):
    from ray.tune.search import ConcurrencyLimiter

    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _basic(opts: TuneOptions, space: SearchSpace, best: BestMetric, seed: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=opts.max_concurrent)


def _hyperopt(opts: TuneOptions, space: SearchSpace, best: BestMetric, seed: int):
    from ray.tune.search.hyperopt import HyperOptSearch

    return _limited(HyperOptSearch(random_state_seed=seed), opts.max_concurrent)


def _bayesopt(opts: TuneOptions, space: SearchSpace, best: BestMetric, seed: int):
    from ray.tune.search.bayesopt import BayesOptSearch

    return _limited(BayesOptSearch(random_state=seed), opts.max_concurrent)


def _optuna(opts: TuneOptions, space: SearchSpace, best: BestMetric, seed: int):
    return _limited(optuna_searcher(space, best.name, best.mode, seed, opts.num_samples), opts.max_concurrent)


# --search_alg name -> searcher factory(options, space, ranking, seed); --scheduler name -> factory(max_t).
# The concurrency limit is part of every searcher (LibCity applied it to HyperOpt/BayesOpt only).
SEARCHERS: dict[str, Callable[..., Any]] = {"BasicSearch": _basic, "HyperOpt": _hyperopt, "BayesOptSearch": _bayesopt,
                                            "OptunaSearch": _optuna}
# Searchers given the space themselves (the Tuner's param_space stays empty).
OWN_SPACE = {"OptunaSearch"}


def _fifo(max_t: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(max_t: int):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=1, reduction_factor=2)


def _median(max_t: int):
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(time_attr="training_iteration", grace_period=1, min_samples_required=2)


def _hyperband(max_t: int):
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr="training_iteration", max_t=max_t, reduction_factor=2)


SCHEDULERS: dict[str, Callable[[int], Any]] = {"FIFO": _fifo, "ASHA": _asha, "MedianStoppingRule": _median,
                                               "HyperBand": _hyperband}

# Keys a space file may not name: they choose what runs, or are set per trial.
FIXED_KEYS = {"task", "model", "dataset", "exp_id", "seed", "dataset_class", "executor", "evaluator",
              "hyper_tune", "train", "saved_model", "epoch", "gpu", "gpu_id", "best_metric"}


@dataclass
class TuneOptions:
    space_file: str
    scheduler: str = "FIFO"
    search_alg: str = "BasicSearch"
    num_samples: int = 5
    max_concurrent: int = 1
    cpu_per_trial: int = 1
    gpu_per_trial: float | None = None
    resume: bool = False
    dry_run: bool = False
    time_budget_s: float | None = None
    ray_address: str | None = None
    storage_path: str | None = None
    metric: str | None = None  # None: config key best_metric (default loss)
    final_seeds: int = 0  # retrain the best configurations this many times with fresh seeds (0: no)
    final_top: int = 1  # how many of the best configurations


def ranking(config: ConfigParser) -> BestMetric:
    """What ranks trials and picks each trial's best epoch: config key best_metric (set by --metric)."""
    return parse_best_metric(config["best_metric"], config["output_window"], where="--metric")


def _check_options(opts: TuneOptions) -> None:
    """Validate counts and resources before anything starts (fails fast, never hangs).

    With a private local instance this machine is the cluster; a cluster's resources are checked
    once it is joined (ray_session.check_resources).
    """
    lookup(SEARCHERS, opts.search_alg, "search_alg", where="--search_alg")
    lookup(SCHEDULERS, opts.scheduler, "scheduler", where="--scheduler")
    for name in ("num_samples", "max_concurrent", "cpu_per_trial"):
        if getattr(opts, name) < 1:
            raise LibTrafficError(f"--{name} must be at least 1, got {getattr(opts, name)}.")
    gpu = opts.gpu_per_trial
    if gpu is not None and (gpu < 0 or (gpu > 1 and gpu != int(gpu))):
        raise LibTrafficError(f"--gpu_per_trial {gpu:g} cannot be satisfied: give a whole number of GPUs or a "
                              "fraction between 0 and 1 (e.g. 0.25: four trials share a GPU).")
    if not (opts.ray_address or os.environ.get("RAY_ADDRESS")):
        cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        if opts.cpu_per_trial > cores:
            raise LibTrafficError(f"--cpu_per_trial {opts.cpu_per_trial} exceeds the {cores} CPU(s) of this machine; "
                                  "no trial could ever start.")
        if gpu is not None and gpu > gpus:
            raise LibTrafficError(
                f"--gpu_per_trial {gpu:g} cannot be satisfied: this machine has {gpus} GPU(s), so every trial "
                "would wait forever. Use --gpu_per_trial 0 to train on the CPU."
            )
    if opts.final_seeds != 0 and opts.final_seeds < 2:
        raise LibTrafficError(f"--final_seeds must be 0 (no retraining) or at least 2 (a spread needs two runs), "
                              f"got {opts.final_seeds}.")
    if opts.final_top < 1:
        raise LibTrafficError(f"--final_top must be at least 1, got {opts.final_top}.")
    if opts.time_budget_s is not None and opts.time_budget_s <= 0:
        raise LibTrafficError(f"--time_budget_s must be positive, got {opts.time_budget_s}.")


def _log_overrides(config: ConfigParser, space: SearchSpace, logger: logging.Logger) -> None:
    for key in space.entries:
        source = config.sources.get(key, "")
        message = "Search space overrides %s = %r (from %s)"
        if source == "command line" or source.startswith("config file"):
            logger.warning(message, key, config[key], source)
        else:
            logger.info(message, key, config[key], source)


def _dry_run(config: ConfigParser, space: SearchSpace, opts: TuneOptions, storage: str,
             other_args: Mapping[str, Any] | None) -> None:
    """Print a few sampled configurations, then build every corner of the space (dry_run.py) and
    check the experiment id; all problems are reported together. Nothing is written."""
    rng = np.random.default_rng(config["seed"])
    trials = opts.num_samples * space.grid_size()
    count = min(trials, 5)
    finals = f", {final_seeds.describe(opts.final_seeds, opts.final_top, trials)}" if opts.final_seeds else ""
    print(f"Dry run: space file {space.path} is valid for --search_alg {opts.search_alg}; "
          f"{trials} trial(s) would run{finals}. Sampled configurations:")
    for i, sampled in enumerate(space.sample(rng, count)):
        trial = config.with_overrides(sampled)
        shown = {k: trial[k] for k in ("model", "dataset", "hidden_size", "num_layers", "dropout", "learning_rate",
                                       "max_epoch", "batch_size", "input_window", "output_window", "scaler") if k in trial}
        print(f"  [{i}] sampled {sampled}\n      resolved {shown | sampled}")

    def check_exp_id() -> None:
        exp_id = config["exp_id"]
        if exp_id is None:
            return
        if not opts.resume:
            _refuse_existing(exp_id, storage)
            return
        _check_resumable(exp_id, storage)
        if not experiment.check_resume(_settings(config, space, opts, other_args)):
            print(f"Note: experiment {exp_id} has no {experiment.SETTINGS_FILE}; its settings cannot be compared.")

    built = dry_run.check_space(config, space, config["seed"], check_exp_id)
    print(f"Dry run: built the dataset, model, optimiser, LR scheduler and evaluator of {built} configuration(s) "
          "(a base sample and every corner of each entry): no problem found. Nothing was trained.")


def hyper_parameter(task: str | None = None, model_name: str | None = None, dataset_name: str | None = None,
                    config_file: str | None = None, space_file: str | None = None, scheduler: str | None = None,
                    search_alg: str | None = None, other_args: Mapping[str, Any] | None = None,
                    num_samples: int = 5, max_concurrent: int = 1, cpu_per_trial: int = 1,
                    gpu_per_trial: float | None = None, resume: bool = False, dry_run: bool = False,
                    time_budget_s: float | None = None, ray_address: str | None = None,
                    storage_path: str | None = None, metric: str | None = None, final_seeds: int = 0,
                    final_top: int = 1) -> dict[str, Any] | None:
    """Tune the model named by ``model_name`` over ``space_file``; returns the best trial's summary.

    ``ray_address`` (or RAY_ADDRESS): the Ray cluster to join, else a private local instance;
    ``storage_path``: folder or URI (s3://...) holding the experiment, default libtraffic/cache/hyper_tune;
    ``metric``: what ranks trials (loss, an evaluator metric such as masked_MAE, or masked_MAE@12);
    ``final_seeds`` / ``final_top``: retrain the ``final_top`` best configurations ``final_seeds`` times (final_seeds.py).
    """
    opts = TuneOptions(space_file or DEFAULT_SPACE, scheduler or "FIFO", search_alg or "BasicSearch", num_samples,
                       max_concurrent, cpu_per_trial, gpu_per_trial, resume, dry_run, time_budget_s, ray_address,
                       storage_path, metric, final_seeds, final_top)
    config = ConfigParser(*default_names(task, model_name, dataset_name), config_file, other_args=other_args)
    config["hyper_tune"] = True
    if opts.metric is not None:
        config["best_metric"] = opts.metric
    opts.metric = ranking(config).name  # an unknown metric stops here, --dry_run included
    _check_options(opts)
    space = load_search_space(opts.space_file, config, opts.search_alg)
    fixed = sorted(FIXED_KEYS & set(space.entries))
    if fixed:
        raise LibTrafficError(f"{space.path}: '{fixed[0]}' cannot be tuned; set it with --{fixed[0]} instead.")
    if config["exp_id"] is None and opts.resume:
        raise LibTrafficError("--resume needs the --exp_id of the experiment to continue.")
    storage = ray_session.storage_root(opts.storage_path)
    if opts.dry_run:
        return _dry_run(config, space, opts, storage, other_args)
    _claim_experiment(config, opts.resume, storage)
    settings = _settings(config, space, opts, other_args)
    exp_id = config["exp_id"]
    # A new run that fails before Ray starts leaves no experiment behind (its --exp_id stays free).
    with experiment_lock.using(paths.experiment_dir(exp_id),
                               discard_on_failure=lambda: not (opts.resume or ray_session.experiment_exists(storage, str(exp_id))),
                               disposable=frozenset({experiment_lock.LOCK_FILE, experiment.SETTINGS_FILE})):
        checked = opts.resume and experiment.check_resume(settings)
        if not opts.resume:
            experiment.write_settings(settings)
        return _tune(config, space, opts, storage, settings_checked=checked or not opts.resume)


def _tune(config: ConfigParser, space: SearchSpace, opts: TuneOptions, storage: str,
          settings_checked: bool) -> dict[str, Any]:
    """Prepare the data once, run Ray Tune, report; the experiment folder is claimed and locked."""
    exp_id = config["exp_id"]
    logger = get_logger(config)
    logger.info("Begin hyperparameter tuning: task=%s, model=%s, dataset=%s, exp_id=%s, search_alg=%s, scheduler=%s",
                config["task"], config["model"], config["dataset"], exp_id, opts.search_alg, opts.scheduler)
    if not settings_checked:
        logger.warning("Experiment %s has no %s (started by an older version): its settings cannot be checked.",
                       exp_id, experiment.SETTINGS_FILE)
    config.log_sources(logger)
    set_threads(config, logger)  # the driver's data preparation and final test evaluation
    _log_overrides(config, space, logger)
    shared = _shared_data(config, space, logger)
    max_t = int(space.upper_bound("max_epoch") or config["max_epoch"])
    start = time.perf_counter()
    # From here a Ctrl-C ends with how to resume (a second one during Ray's graceful stop too).
    with ray_session.CtrlC(exp_id) as ctrl_c:
        results, finals = _run_ray(config, space, opts, max_t, shared, storage, ctrl_c, logger)
        return tune_report.finish(config, space, results, logger, shared, time.perf_counter() - start, finals)


def _settings(config: ConfigParser, space: SearchSpace, opts: TuneOptions,
              other_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The experiment's record (hyper_tune_experiment.json), compared on --resume."""
    options = {"search_alg": opts.search_alg, "scheduler": opts.scheduler, "num_samples": opts.num_samples,
               "max_concurrent": opts.max_concurrent, "cpu_per_trial": opts.cpu_per_trial,
               "gpu_per_trial": opts.gpu_per_trial, "time_budget_s": opts.time_budget_s, "metric": opts.metric,
               "final_seeds": opts.final_seeds, "final_top": opts.final_top}
    return experiment.experiment_settings(config, space.path, space.entries, options, set(other_args or {}))


def _refuse_existing(exp_id: str | int, storage: str) -> None:
    """A new tuning run may not reuse an experiment id; the message names the folder that exists."""
    folder = paths.experiment_dir(exp_id)  # also checks that the id is a plain name
    ray_dir = f"{storage}/{exp_id}"
    if ray_session.experiment_exists(storage, str(exp_id)):
        raise LibTrafficError(f"Experiment {exp_id} already exists ({ray_dir}). Continue it with --resume --exp_id "
                              f"{exp_id}, or choose a new --exp_id.")
    if folder.exists():
        kind = ("a tuning experiment whose Ray folder is gone" if experiment.settings_file(exp_id).is_file()
                else "a run_model.py experiment")
        raise LibTrafficError(f"Experiment folder {folder} already exists ({kind}: there is no {ray_dir}, so "
                              "--resume cannot continue it). Choose a new --exp_id.")


def _check_resumable(exp_id: str | int, storage: str) -> None:
    paths.experiment_dir(exp_id)  # checks that the id is a plain name
    if not ray_session.experiment_exists(storage, str(exp_id)):
        raise LibTrafficError(f"--resume: no experiment {storage}/{exp_id} to continue; check --exp_id. "
                              f"Experiments are looked for under --storage_path ({storage}).")


def _claim_experiment(config: ConfigParser, resume: bool, storage: str) -> None:
    """Check (resume) or atomically create (new run) the experiment of config['exp_id']. A new run
    without --exp_id gets a fresh random id."""
    if resume:
        _check_resumable(config["exp_id"], storage)
        paths.make_dir(paths.experiment_dir(config["exp_id"]))
        return
    if config["exp_id"] is not None:
        _refuse_existing(config["exp_id"], storage)
    config["exp_id"] = claim_new_experiment(
        config["exp_id"], "another run took this --exp_id a moment ago; choose a new --exp_id.")
    if ray_session.experiment_exists(storage, str(config["exp_id"])):
        raise LibTrafficError(f"Ray's experiment folder {storage}/{config['exp_id']} already exists; choose a new "
                              "--exp_id.")


def _shared_data(config: ConfigParser, space: SearchSpace, logger: logging.Logger):
    """What every trial receives through Ray's object store: prepared data, or the raw arrays when
    the space tunes data settings (each trial then cuts and scales its own windows)."""
    raw_tuned = sorted(set(space.entries) & set(RAW_KEYS))
    if raw_tuned:
        raise LibTrafficError(
            f"{space.path}: '{raw_tuned[0]}' chooses which files or columns are read and cannot be tuned (trials "
            "receive the data read once by this process). Run one experiment per value instead."
        )
    data_tuned = sorted(set(space.entries) & set(DATA_KEYS))
    if data_tuned:
        raw = read_raw(config)
        logger.info("The space tunes data settings (%s): read the raw data once (%s), shared with every trial, "
                    "which cuts and scales its own windows", ", ".join(data_tuned), raw.data.shape)
        return raw
    prepared = get_dataset(config).prepare()
    logger.info("Prepared data once in the driver: %s, shared with every trial", prepared.data.shape)
    return prepared


def _run_ray(config: ConfigParser, space: SearchSpace, opts: TuneOptions, max_t: int, shared, storage: str,
             ctrl_c: ray_session.CtrlC, logger: logging.Logger):
    from ray import tune

    session = ray_session.connect(opts.ray_address, opts.cpu_per_trial, storage)
    try:
        gpus = ray_session.check_resources(session, opts.cpu_per_trial, opts.gpu_per_trial)
        ray_session.check_storage_shared(session, storage)
        # A failed trial is listed with its error at the end and in Ray's table (with its error
        # file); Ray's own full traceback dump per failure would bury the trial table. Ray's
        # warnings on Ctrl-C (its Tuner.restore hint) give way to ours.
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # trials not started yet
        settings = TrialSettings(base_seed=config["seed"], threads=opts.cpu_per_trial)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, base_config=config, shared=shared, settings=settings),
            {"cpu": opts.cpu_per_trial, "gpu": gpus},
        )
        tuner = _tuner(config, space, opts, max_t, trainable, storage, ctrl_c, logger)
        start = time.monotonic()
        results = tuner.fit()
        budget_spent = opts.time_budget_s is not None and time.monotonic() - start >= opts.time_budget_s
        if not budget_spent and ray_session.unfinished(results, opts.num_samples * space.grid_size()):
            tune_report.save_interrupted(config, tune_report.collect_records(results, ranking(config)))
            raise KeyboardInterrupt(ctrl_c.hint)
        finals = _final_runs(config, opts, results, shared, gpus, logger)
    finally:
        session.end()
    return results, finals


def _final_runs(config: ConfigParser, opts: TuneOptions, results, shared, gpus: float,
                logger: logging.Logger) -> list[dict[str, Any]]:
    """--final_seeds: the best configurations retrained with fresh seeds on the same Ray session."""
    if not opts.final_seeds:
        return []
    records = tune_report.collect_records(results, ranking(config))
    runs = final_seeds.plan(records, opts.final_top, opts.final_seeds, config["seed"])
    if not runs:
        return []  # no trial finished: finish() reports that
    # Only a resume reads the runs an interrupted run finished; a new experiment's file starts empty.
    finished = final_seeds.FinishedRuns(final_seeds.runs_file(config["exp_id"]), resume=opts.resume)
    # Ray Tune's Ctrl-C handling ends with fit(): from here one Ctrl-C stops at once.
    with ray_session.CtrlC(config["exp_id"]):
        try:
            return final_seeds.run_all(runs, config, shared, opts.cpu_per_trial, gpus, opts.max_concurrent, logger,
                                       finished)
        except final_seeds.Interrupted as stop:
            tune_report.save_interrupted(config, records, stop.entries)
            raise


def _tuner(config: ConfigParser, space: SearchSpace, opts: TuneOptions, max_t: int, trainable, storage: str,
           ctrl_c: ray_session.CtrlC, logger: logging.Logger):
    from ray import tune

    if opts.resume:
        logger.info("Resuming experiment %s/%s", storage, config["exp_id"])
        return tune.Tuner.restore(f"{storage}/{config['exp_id']}", trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    best = ranking(config)
    own_space = opts.search_alg in OWN_SPACE  # grids are then enumerated by the searcher, one trial per sample each
    return tune.Tuner(
        trainable,
        param_space={} if own_space else space.param_space,
        tune_config=tune.TuneConfig(
            metric=best.name, mode=best.mode, search_alg=SEARCHERS[opts.search_alg](opts, space, best, config["seed"]),
            scheduler=SCHEDULERS[opts.scheduler](max_t),
            num_samples=opts.num_samples * space.grid_size() if own_space else opts.num_samples,
            time_budget_s=opts.time_budget_s, trial_dirname_creator=trial_dirname,
            # One machine: a finished trial's worker trains the next (no start-up per trial). On a
            # cluster a reused worker would take the trial a new node's worker is starting for,
            # leaving that node idle while its worker imports PyTorch.
            reuse_actors=not ray_session.multi_node(),
        ),
        run_config=tune.RunConfig(
            name=str(config["exp_id"]), storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=best.name,
                                                    checkpoint_score_order=best.mode),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            progress_reporter=tune_report.progress_reporter(space, best.name),
            callbacks=[ctrl_c.callback()],
            verbose=1,
        ),
    )
