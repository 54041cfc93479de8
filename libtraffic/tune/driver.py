"""hyper_parameter: LibCity's hyper_tune.py on Ray Tune 2.x (Tuner API).

The dataset is prepared once here in the driver (or, when the space tunes data settings, its raw
arrays are read once) and handed to every trial through Ray's object store (tune.with_parameters),
so trials open no file and run on any node of a cluster (session.py). Each trial trains one
sampled configuration (trial.py) and reports its validation loss as ``loss`` (and the --metric
that ranks trials, when it is an evaluator metric) every epoch, so ASHA / MedianStoppingRule can
stop it early by that metric.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.data.prepared import DATA_KEYS, RAW_KEYS, PreparedData, RawData, read_raw
from libtraffic.executor.best_metric import parse_best_metric
from libtraffic.tune import final_runs, ray_private, session, settings, signing
from libtraffic.tune.context import TuneRun
from libtraffic.tune.dry_run import Problems, dry_run
from libtraffic.tune.finish import finish, save_interrupted
from libtraffic.tune.interrupt import RAY_STARTING, CtrlC, ctrl_c_deferred, interrupt_hint, stop_kind
from libtraffic.tune.options import TuneOptions
from libtraffic.tune.records import collect_records, unfinished
from libtraffic.tune.progress import StatusTable, TrialLines
from libtraffic.tune.searchers import SCHEDULERS, SEARCHERS
from libtraffic.tune.spaces import SearchSpace, load_search_space, read_search_space
from libtraffic.tune.trial import TrialNames, TrialSettings, train_trial
from libtraffic.results import FINAL_RUNS_FILE
from libtraffic.utils import experiment_lock, paths
from libtraffic.utils.cli import default_names
from libtraffic.utils.device import set_threads
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.logger import get_logger
from libtraffic.utils.registry import lookup

# The most trials a search may have (grid points x --num_samples).
MAX_TRIALS = 10_000
# Keys a space file may not name: they choose what runs, or are set per trial.
FIXED_KEYS = {"task", "model", "dataset", "exp_id", "seed", "dataset_class", "executor", "evaluator",
              "hyper_tune", "train", "saved_model", "epoch", "gpu", "gpu_id", "best_metric"}


def hyper_parameter(task: str | None = None, model_name: str | None = None, dataset_name: str | None = None,
                    config_file: str | None = None, space_file: str | None = None, scheduler: str | None = None,
                    search_alg: str | None = None, other_args: Mapping[str, Any] | None = None,
                    **options: Any) -> dict[str, Any] | None:
    """Tune the model named by ``model_name`` over ``space_file``; returns the best trial's summary
    (None for a dry run).

    The arguments are LibCity's; ``options`` are the other fields of TuneOptions (num_samples,
    max_concurrent, cpu_per_trial, gpu_per_trial, resume, dry_run, time_budget_s, ray_address,
    storage_path, metric, final_seeds, final_top, verbose), whose defaults apply to those not given.
    """
    opts = TuneOptions.from_arguments({"space_file": space_file, "scheduler": scheduler, "search_alg": search_alg,
                                       **options})
    config = ConfigParser(*default_names(task, model_name, dataset_name), config_file, other_args=other_args)
    tuned = {"hyper_tune": True, **({} if opts.metric is None else {"best_metric": opts.metric})}
    config = config.with_overrides(tuned, source="hyper_tune")
    # A real run stops at the first problem; --dry_run collects them all and lists them at its end.
    problems = Problems(collect=opts.dry_run)
    problems.call(lookup, SEARCHERS, opts.search_alg, "search_alg", where="--search_alg")
    problems.call(lookup, SCHEDULERS, opts.scheduler, "scheduler", where="--scheduler")
    problems.extend(opts.problems())
    space = _load_space(opts, config, problems)
    if problems.call(parse_best_metric, config["best_metric"], config["output_window"], where="--metric") is None:
        config = config.with_overrides({"best_metric": "loss"}, source="dry run")  # reached by --dry_run only
    run = TuneRun(config, space, opts, session.storage_root(opts.storage_path), frozenset(other_args or {}))
    _check_search_size(run)
    if config["exp_id"] is None and opts.resume:
        problems.add("--resume needs the --exp_id of the experiment to continue.")
    if opts.dry_run:
        compare = not problems.found  # a space with problems would differ from any stored one
        return dry_run(run, problems, lambda: _check_exp_id_for_dry_run(run, compare))
    run.config = config.with_overrides({"exp_id": _claim_experiment(run)}, source="new experiment")
    record = _settings(run)
    # A new run that fails before Ray saved its first state leaves no experiment behind (its --exp_id stays free).
    try:
        with experiment_lock.using(run.folder, discard_on_failure=lambda: _forget_unstarted(run),
                                   disposable=frozenset({experiment_lock.LOCK_FILE, settings.SETTINGS_FILE})):
            checked = opts.resume and settings.check_resume(record)
            if not opts.resume:
                settings.write_settings(record)
            return _tune(run, settings_checked=checked or not opts.resume)
    except KeyboardInterrupt as stop:
        raise _next_command(run, stop) from None


def _forget_unstarted(run: TuneRun) -> bool:
    """Whether a failed or interrupted run leaves nothing to resume: a new run Ray never saved a state of.
    Ray's folder of it, if any (a tuner.pkl alone), is removed: it was made by this run, moments ago."""
    if run.options.resume or session.experiment_restorable(run.storage, str(run.exp_id)):
        return False
    if session.experiment_exists(run.storage, str(run.exp_id)):
        session.remove_experiment(run.storage, str(run.exp_id))
    return True


def _next_command(run: TuneRun, stop: KeyboardInterrupt) -> KeyboardInterrupt:
    """The interruption's message with the command that works next: --resume once Ray saved the
    experiment's state, else the same command again (or with a new --exp_id if its folder is kept)."""
    kind, what = stop_kind(stop)
    if run.options.resume or session.experiment_restorable(run.storage, str(run.exp_id)):
        message = str(stop) if "--resume --exp_id" in str(stop) else interrupt_hint(run.exp_id, what)
    elif run.folder.exists():
        message = (f"{what} before the experiment's first state was saved: nothing to resume. Start again with a "
                   f"new --exp_id ({run.folder} is kept).")
    else:
        message = f"{what} before any trial started: nothing to resume. Start again with the same command."
    return kind(message)


def _check_search_size(run: TuneRun) -> None:
    """Refuse a search of more than MAX_TRIALS trials, counted from the space file before Ray expands the grid:
    Ray Tune builds every trial of a grid before the first one runs, which takes longer than any
    --time_budget_s, silently."""
    grid, samples = run.space.grid_size(), run.options.num_samples
    if grid * samples > MAX_TRIALS:
        raise LibTrafficError(
            f"{run.space.path}: {grid:,} grid point(s) x --num_samples {samples} = {grid * samples:,} trials, more than "
            f"the {MAX_TRIALS:,} a search may have (Ray Tune creates every trial of a grid before it starts one and "
            "saves the whole list with every checkpoint: hours before the first trial, whatever --time_budget_s). Use "
            "fewer grid_search values, or sample the space instead ('choice', 'uniform', ... with --num_samples).")


def _load_space(opts: TuneOptions, config: ConfigParser, problems: Problems) -> SearchSpace:
    """The space file, checked for ``opts.search_alg``; while collecting (--dry_run), the space of the entries
    without problems (empty when the file cannot be read)."""
    if not problems.collect:
        space = load_search_space(opts.space_file, config, opts.search_alg)
    else:
        try:
            space, found = read_search_space(opts.space_file, config, opts.search_alg)
        except LibTrafficError as err:
            problems.add(str(err))
            return SearchSpace(Path(opts.space_file), {}, {})
        problems.extend(found)
    untunable = _untunable(space)
    problems.extend(untunable.values())
    return space.without(set(untunable))


def _untunable(space: SearchSpace) -> dict[str, str]:
    """Entries a space file may not have, each with its message."""
    found = {key: f"{space.path}: '{key}' cannot be tuned; set it with --{key} instead."
             for key in sorted(FIXED_KEYS & set(space.entries))}
    found |= {key: f"{space.path}: '{key}' chooses which files or columns are read and cannot be tuned (trials "
                   "receive the data read once by this process). Run one experiment per value instead."
              for key in sorted(set(space.entries) & (set(RAW_KEYS) | {"data_path"}) - FIXED_KEYS)}
    return found


def _settings(run: TuneRun) -> dict[str, Any]:
    """The experiment's record (hyper_tune_experiment.json), compared on --resume."""
    o = run.options
    options = {"search_alg": o.search_alg, "scheduler": o.scheduler, "num_samples": o.num_samples,
               "max_concurrent": o.max_concurrent, "cpu_per_trial": o.cpu_per_trial,
               "gpu_per_trial": o.gpu_per_trial, "time_budget_s": o.time_budget_s, "metric": run.ranking.name,
               "final_seeds": o.final_seeds, "final_top": o.final_top}
    return settings.experiment_settings(run.config, run.space.path, run.space.entries, options, set(run.cli_keys))


def _refuse_existing(run: TuneRun) -> None:
    """A new tuning run may not reuse an experiment id; the message names the folder that exists."""
    exp_id = run.exp_id
    if session.experiment_exists(run.storage, str(exp_id)):
        raise LibTrafficError(f"Experiment {exp_id} already exists ({run.ray_folder}). Continue it with --resume "
                              f"--exp_id {exp_id}, or choose a new --exp_id.")
    if run.folder.exists():
        kind = ("a tuning experiment whose Ray folder is gone" if settings.settings_file(exp_id).is_file()
                else "a run_model.py experiment")
        raise LibTrafficError(f"Experiment folder {run.folder} already exists ({kind}: there is no {run.ray_folder}, "
                              "so --resume cannot continue it). Choose a new --exp_id.")


def _check_resumable(run: TuneRun) -> None:
    paths.experiment_dir(run.exp_id)  # raises for an id that is not a plain folder name
    if not session.experiment_exists(run.storage, str(run.exp_id)):
        raise LibTrafficError(f"--resume: no experiment {run.ray_folder} to continue; check --exp_id. "
                              f"Experiments are looked for under --storage_path ({run.storage}).")
    if not session.experiment_restorable(run.storage, str(run.exp_id)):
        raise LibTrafficError(f"--resume: {run.ray_folder} holds no saved experiment state (tuner.pkl and "
                              "experiment_state-*.json): it stopped before its first trial, so there is nothing to "
                              "continue. Start a new experiment with a new --exp_id.")
    signing.verify_experiment(run.storage, str(run.exp_id))


def _check_exp_id_for_dry_run(run: TuneRun, compare_settings: bool) -> None:
    if run.exp_id is None:
        return
    if not run.options.resume:
        _refuse_existing(run)
        return
    _check_resumable(run)
    if compare_settings and not settings.check_resume(_settings(run)):
        print(f"Note: experiment {run.exp_id} has no {settings.SETTINGS_FILE} here; its settings cannot be compared.")


def _claim_experiment(run: TuneRun) -> str | int:
    """Check (resume) or atomically create (new run) the experiment of config['exp_id'] and return its id.
    A new run without --exp_id gets a fresh random id."""
    if run.options.resume:
        _check_resumable(run)
        paths.make_dir(run.folder)
        return run.exp_id
    if run.exp_id is not None:
        _refuse_existing(run)
    exp_id = experiment_lock.claim_new_experiment(
        run.exp_id, "another run took this --exp_id a moment ago; choose a new --exp_id.")
    if session.experiment_exists(run.storage, str(exp_id)):
        raise LibTrafficError(f"Ray's experiment folder {run.storage}/{exp_id} already exists; choose a new --exp_id.")
    return exp_id


def _tune(run: TuneRun, settings_checked: bool) -> dict[str, Any]:
    """Prepare the data once, run Ray Tune, report; the experiment folder is claimed and locked."""
    config, opts = run.config, run.options
    run.logger = get_logger(config)
    run.logger.info("Begin hyperparameter tuning: task=%s, model=%s, dataset=%s, exp_id=%s, search_alg=%s, "
                    "scheduler=%s", config["task"], config["model"], config["dataset"], run.exp_id, opts.search_alg,
                    opts.scheduler)
    if not settings_checked:
        run.logger.warning("Experiment %s has no %s on this machine (it started elsewhere, with this --storage_path?): "
                           "its settings cannot be compared with this command's.", run.exp_id, settings.SETTINGS_FILE)
    config.log_sources(run.logger)
    set_threads(config, run.logger)  # the driver's data preparation and final test evaluation
    _log_overrides(run)
    run.shared = _shared_data(run)
    start = time.perf_counter()
    # From here a Ctrl-C ends with how to resume (a second one during Ray's graceful stop too).
    with CtrlC(run.exp_id) as ctrl_c:
        results, finals = _run_ray(run, ctrl_c)
        return finish(run, results, time.perf_counter() - start, finals)


def _log_overrides(run: TuneRun) -> None:
    for key in run.space.entries:
        source = run.config.sources.get(key, "")
        message = "Search space overrides %s = %r (from %s)"
        if source == "command line" or source.startswith("config file"):
            run.logger.warning(message, key, run.config[key], source)
        else:
            run.logger.info(message, key, run.config[key], source)


def _shared_data(run: TuneRun) -> PreparedData | RawData:
    """What every trial receives through Ray's object store: prepared data, or the raw arrays when
    the space tunes data settings (each trial then cuts and scales its own windows)."""
    data_tuned = sorted(set(run.space.entries) & set(DATA_KEYS))
    if data_tuned:
        raw = read_raw(run.config)
        run.logger.info("The space tunes data settings (%s): read the raw data once (%s), shared with every trial, "
                        "which cuts and scales its own windows", ", ".join(data_tuned), raw.data.shape)
        return raw
    prepared = get_dataset(run.config).prepare()
    run.logger.info("Prepared data once in the driver: %s, shared with every trial", prepared.data.shape)
    return prepared


def _run_ray(run: TuneRun, ctrl_c: CtrlC):
    opts = run.options
    ray_private.upload_experiment_state_in_turn(after_save=signing.sign_staging)
    ray_session = None
    try:
        # A signal inside ray.init() could leave Ray half started, for its exit handler to crash on (an
        # exit 139 was seen): it takes effect once Ray has started, and the session is then ended here.
        with ctrl_c_deferred(RAY_STARTING):
            ray_session = session.connect(opts.ray_address, opts.cpu_per_trial, run.storage)
        ctrl_c.handle_sigterm()
        gpus = session.check_resources(ray_session, opts.cpu_per_trial, opts.gpu_per_trial)
        session.check_storage_shared(ray_session, run.storage)
        trial_settings = TrialSettings(base_seed=run.config["seed"], threads=opts.cpu_per_trial)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, base_config=run.config, shared=run.shared, settings=trial_settings),
            {"cpu": opts.cpu_per_trial, "gpu": gpus},
        )
        tuner = _tuner(run, trainable, ctrl_c)
        start = time.monotonic()
        results = tuner.fit()
        ctrl_c.fit_ended()
        run.budget_spent = opts.time_budget_s is not None and time.monotonic() - start >= opts.time_budget_s
        if not run.budget_spent and unfinished(results, run.expected_trials):
            save_interrupted(run, collect_records(results, run.ranking))
            raise KeyboardInterrupt(ctrl_c.hint)
        finals = _final_runs(run, results, gpus)
    finally:
        if ray_session is not None:
            ray_session.end()
    return results, finals


def _final_runs(run: TuneRun, results, gpus: float) -> list[dict[str, Any]]:
    """--final_seeds: the best configurations retrained with fresh seeds on the same Ray session."""
    opts = run.options
    if not opts.final_seeds:
        return []
    records = collect_records(results, run.ranking, run.budget_spent)
    runs = final_runs.plan(records, opts.final_top, opts.final_seeds, run.config["seed"])
    if not runs:
        return []  # no trial finished: finish() reports that
    # Only a resume reads the runs an interrupted run finished; a new experiment's file starts empty.
    finished = final_runs.FinishedRuns(run.folder / FINAL_RUNS_FILE, resume=opts.resume)
    # Ray Tune's Ctrl-C handling ends with fit(): from here one Ctrl-C stops at once.
    with CtrlC(run.exp_id):
        try:
            return final_runs.run_all(runs, run.config, run.shared, opts.cpu_per_trial, gpus, opts.max_concurrent,
                                      run.logger, finished)
        except final_runs.Interrupted as stop:
            save_interrupted(run, records, stop.entries)
            kind, what = stop_kind(stop)
            raise kind(f"{interrupt_hint(run.exp_id, what)} {stop}") from None


def _tuner(run: TuneRun, trainable, ctrl_c: CtrlC) -> tune.Tuner:
    opts = run.options
    if opts.resume:
        run.logger.info("Resuming experiment %s", run.ray_folder)
        signing.verify_experiment(run.storage, str(run.exp_id))  # before Ray unpickles any of it
        return tune.Tuner.restore(run.ray_folder, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    tuner = _new_tuner(run, trainable, ctrl_c)
    signing.sign_tuner(run.storage, str(run.exp_id))
    return tuner


def _new_tuner(run: TuneRun, trainable, ctrl_c: CtrlC) -> tune.Tuner:
    opts = run.options
    best = run.ranking
    searcher = SEARCHERS[opts.search_alg]
    search_alg = searcher.build(run)
    names = TrialNames(ray_private.first_creation_index(search_alg))
    return tune.Tuner(
        trainable,
        param_space={} if searcher.own_space else run.space.param_space,
        tune_config=tune.TuneConfig(
            metric=best.name, mode=best.mode, search_alg=search_alg,
            scheduler=SCHEDULERS[opts.scheduler](run.max_t),
            # A searcher given the space enumerates the grid itself: one trial per grid point and sample.
            num_samples=run.expected_trials if searcher.own_space else opts.num_samples,
            time_budget_s=opts.time_budget_s, trial_dirname_creator=names, trial_name_creator=names,
            # One machine: a finished trial's worker trains the next (no start-up per trial). On a
            # cluster a reused worker would take the trial a new node's worker is starting for,
            # leaving that node idle while its worker imports PyTorch.
            reuse_actors=not session.multi_node(),
        ),
        run_config=tune.RunConfig(
            name=str(run.exp_id), storage_path=run.storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=best.name,
                                                    checkpoint_score_order=best.mode),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            # Ray restores these with the experiment: a --resume keeps the first run's --verbose.
            progress_reporter=StatusTable(run) if opts.verbose else None,
            callbacks=[ctrl_c.callback(), TrialLines(run.space.entries, run.ranking.name, run.expected_trials,
                                                     opts.max_concurrent)],
            verbose=1 if opts.verbose else 0,  # 0: none of Ray's status output (RAY_AIR_NEW_OUTPUT=0, session.py)
        ),
    )
