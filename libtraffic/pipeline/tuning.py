"""hyper_parameter: LibCity's hyper_tune.py on Ray Tune 2.x (Tuner API).

The dataset is prepared once here in the driver (or, when the space tunes data settings, its raw
arrays are read once) and handed to every trial through Ray's object store (tune.with_parameters),
so trials open no file and run on any node of a cluster (ray_session.py). Each trial trains one
sampled configuration (trial.py) and reports its validation loss as ``loss`` every epoch, so
ASHA / MedianStoppingRule can stop it early.
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
from libtraffic.pipeline.pipeline import new_exp_id
from libtraffic.pipeline.search_space import SearchSpace, load_search_space
from libtraffic.pipeline.trial import TrialSettings, train_trial, trial_dirname
from libtraffic.pipeline import ray_session, tune_report
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.logger import get_logger
from libtraffic.utils.registry import lookup


def _limited(searcher, max_concurrent: int):
    from ray.tune.search import ConcurrencyLimiter

    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _basic(seed: int, max_concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def _hyperopt(seed: int, max_concurrent: int):
    from ray.tune.search.hyperopt import HyperOptSearch

    return _limited(HyperOptSearch(random_state_seed=seed), max_concurrent)


def _bayesopt(seed: int, max_concurrent: int):
    from ray.tune.search.bayesopt import BayesOptSearch

    return _limited(BayesOptSearch(random_state=seed), max_concurrent)


# --search_alg name -> searcher factory(seed, max_concurrent); --scheduler name -> factory(max_t).
# The concurrency limit is part of every searcher (LibCity applied it to HyperOpt/BayesOpt only).
SEARCHERS: dict[str, Callable[[int, int], Any]] = {"BasicSearch": _basic, "HyperOpt": _hyperopt, "BayesOptSearch": _bayesopt}


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
              "hyper_tune", "train", "saved_model", "epoch", "gpu", "gpu_id"}


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


def _dry_run(config: ConfigParser, space: SearchSpace, opts: TuneOptions, logger: logging.Logger) -> None:
    rng = np.random.default_rng(config["seed"])
    count = min(opts.num_samples * space.grid_size(), 5)
    print(f"Dry run: space file {space.path} is valid for --search_alg {opts.search_alg}; "
          f"{opts.num_samples * space.grid_size()} trial(s) would run. Sampled configurations:")
    for i, sampled in enumerate(space.sample(rng, count)):
        trial = config.with_overrides(sampled)
        shown = {k: trial[k] for k in ("model", "dataset", "hidden_size", "num_layers", "dropout", "learning_rate",
                                       "max_epoch", "batch_size", "input_window", "output_window", "scaler") if k in trial}
        print(f"  [{i}] sampled {sampled}\n      resolved {shown | sampled}")
    logger.info("Dry run finished; nothing was trained.")


def hyper_parameter(task: str | None = None, model_name: str | None = None, dataset_name: str | None = None,
                    config_file: str | None = None, space_file: str | None = None, scheduler: str | None = None,
                    search_alg: str | None = None, other_args: Mapping[str, Any] | None = None,
                    num_samples: int = 5, max_concurrent: int = 1, cpu_per_trial: int = 1,
                    gpu_per_trial: float | None = None, resume: bool = False, dry_run: bool = False,
                    time_budget_s: float | None = None, ray_address: str | None = None,
                    storage_path: str | None = None) -> dict[str, Any] | None:
    """Tune the model named by ``model_name`` over ``space_file``; returns the best trial's summary.

    ``ray_address`` (or RAY_ADDRESS): the Ray cluster to join, else a private local instance;
    ``storage_path``: folder or URI (s3://...) holding the experiment, default libtraffic/cache/hyper_tune.
    """
    if not space_file:
        raise LibTrafficError("--space_file is required: the JSON search space (e.g. --space_file sample_space_file).")
    opts = TuneOptions(space_file, scheduler or "FIFO", search_alg or "BasicSearch", num_samples, max_concurrent,
                       cpu_per_trial, gpu_per_trial, resume, dry_run, time_budget_s, ray_address, storage_path)
    config = ConfigParser(task or "traffic_state_pred", model_name or "GRU", dataset_name or "METR_LA",
                          config_file, other_args=other_args)
    config["hyper_tune"] = True
    _check_options(opts)
    space = load_search_space(opts.space_file, config, opts.search_alg)
    fixed = sorted(FIXED_KEYS & set(space.entries))
    if fixed:
        raise LibTrafficError(f"{space.path}: '{fixed[0]}' cannot be tuned; set it with --{fixed[0]} instead.")
    exp_id = config["exp_id"]
    if exp_id is None and opts.resume:
        raise LibTrafficError("--resume needs the --exp_id of the experiment to continue.")
    if exp_id is None:
        config["exp_id"] = exp_id = new_exp_id()
    storage = ray_session.storage_root(opts.storage_path)
    ray_dir = f"{storage}/{exp_id}"
    if not opts.dry_run:
        exists = ray_session.experiment_exists(storage, str(exp_id))
        if opts.resume and not exists:
            raise LibTrafficError(f"--resume: no experiment {ray_dir} to continue; check --exp_id. "
                                  f"Experiments are looked for under --storage_path ({storage}).")
        if not opts.resume and (exists or paths.experiment_dir(exp_id).exists()):
            raise LibTrafficError(
                f"Experiment {exp_id} already exists ({ray_dir}). Continue it with --resume --exp_id {exp_id}, "
                "or choose a new --exp_id."
            )
    logger = get_logger(config)
    logger.info("Begin hyperparameter tuning: task=%s, model=%s, dataset=%s, exp_id=%s, search_alg=%s, scheduler=%s",
                config["task"], config["model"], config["dataset"], exp_id, opts.search_alg, opts.scheduler)
    config.log_sources(logger)
    _log_overrides(config, space, logger)
    if opts.dry_run:
        _dry_run(config, space, opts, logger)
        return None
    shared = _shared_data(config, space, logger)
    max_t = int(space.upper_bound("max_epoch") or config["max_epoch"])
    start = time.perf_counter()
    # From here a Ctrl-C ends with how to resume (a second one during Ray's graceful stop too).
    with ray_session.CtrlC(exp_id) as ctrl_c:
        results = _run_ray(config, space, opts, max_t, shared, storage, ctrl_c, logger)
        return tune_report.finish(config, space, results, logger, shared, time.perf_counter() - start)


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
    finally:
        session.end()
    budget_spent = opts.time_budget_s is not None and time.monotonic() - start >= opts.time_budget_s
    expected = opts.num_samples * (space.grid_size() if opts.search_alg == "BasicSearch" else 1)
    if not budget_spent and ray_session.unfinished(results, expected):
        raise KeyboardInterrupt(ctrl_c.hint)
    return results


def _tuner(config: ConfigParser, space: SearchSpace, opts: TuneOptions, max_t: int, trainable, storage: str,
           ctrl_c: ray_session.CtrlC, logger: logging.Logger):
    from ray import tune

    if opts.resume:
        logger.info("Resuming experiment %s/%s", storage, config["exp_id"])
        return tune.Tuner.restore(f"{storage}/{config['exp_id']}", trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    return tune.Tuner(
        trainable,
        param_space=space.param_space,
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", search_alg=SEARCHERS[opts.search_alg](config["seed"], opts.max_concurrent),
            scheduler=SCHEDULERS[opts.scheduler](max_t), num_samples=opts.num_samples,
            time_budget_s=opts.time_budget_s, trial_dirname_creator=trial_dirname,
            # One machine: a finished trial's worker trains the next (no start-up per trial). On a
            # cluster a reused worker would take the trial a new node's worker is starting for,
            # leaving that node idle while its worker imports PyTorch.
            reuse_actors=not ray_session.multi_node(),
        ),
        run_config=tune.RunConfig(
            name=str(config["exp_id"]), storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="loss",
                                                    checkpoint_score_order="min"),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            progress_reporter=tune_report.progress_reporter(space),
            callbacks=[ctrl_c.callback()],
            verbose=1,
        ),
    )
