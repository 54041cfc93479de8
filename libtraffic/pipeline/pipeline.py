"""run_model: one training + evaluation run, LibCity's run_model.py behaviour."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libtraffic.config import ConfigParser
from libtraffic.pipeline.build import build_run
from libtraffic.utils import experiment_lock, paths
from libtraffic.utils.cli import default_names
from libtraffic.utils.device import set_threads
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.logger import get_logger


def _existing_experiment(config: ConfigParser) -> str | int:
    """The experiment --train false / --epoch K works on; it must exist."""
    mode = "--train false" if not config["train"] else f"--epoch {config['epoch']}"
    exp_id = config["exp_id"]
    if exp_id is None:
        raise LibTrafficError(f"{mode} works on an existing experiment: add the --exp_id of the run that trained it.")
    if not paths.experiment_dir(exp_id).is_dir():
        raise LibTrafficError(f"{mode}: there is no experiment folder {paths.experiment_dir(exp_id)}; check --exp_id.")
    return exp_id


def run_model(task: str | None = None, model_name: str | None = None, dataset_name: str | None = None,
              config_file: str | None = None, saved_model: bool | None = None, train: bool | None = None,
              other_args: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Train (unless train is false) and test one model; returns the test metrics.

    Files: libtraffic/log/<exp_id>-..., libtraffic/cache/<exp_id>/{model_cache,evaluate_cache,...}.
    A new training run claims its experiment folder; --train false / --epoch K reuse one, holding
    its lock (shared when only evaluating) so that two runs never write into the same folder.
    """
    config = ConfigParser(*default_names(task, model_name, dataset_name), config_file, saved_model, train, other_args)
    new = config["train"] and config["epoch"] == 0
    if new:
        exp_id = experiment_lock.claim_new_experiment(
            config["exp_id"], "choose a new --exp_id, or pass --train false to evaluate its saved model "
            "(or --epoch N to resume training from it).")
        config = config.with_overrides({"exp_id": exp_id}, source="new experiment")
    folder = paths.experiment_dir(_existing_experiment(config))
    with experiment_lock.using(folder, exclusive=config["train"], discard_on_failure=lambda: new):
        return _run(config)


def _run(config: ConfigParser) -> dict[str, float]:
    exp_id = config["exp_id"]
    logger = get_logger(config)
    logger.info("Begin pipeline, task=%s, model_name=%s, dataset_name=%s, exp_id=%s",
                config["task"], config["model"], config["dataset"], exp_id)
    config.log_sources(logger)
    set_threads(config, logger)
    run = build_run(config, logger=logger)
    logger.info("Data: %d nodes, %d features, split %s samples (train/valid/test)",
                run.data_feature["num_nodes"], run.data_feature["feature_dim"], run.dataset.prepared.split)
    executor = run.executor
    model_file = paths.model_cache_file(exp_id, config["model"], config["dataset"])
    if config["train"]:
        try:
            executor.train(run.train_data, run.valid_data)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(config)) from None
        if config["saved_model"]:
            use_best = config["load_best_epoch"] and executor.best_state is not None
            executor.save_model(model_file, executor.best_state if use_best else executor.state(executor.start_epoch - 1))
    elif not model_file.exists():
        raise LibTrafficError(f"--train false but there is no saved model {model_file}; train it first.")
    else:
        executor.load_model(model_file)
    return executor.evaluate(run.test_data)


def interrupted_message(config: ConfigParser) -> str:
    """What a Ctrl-C during training kept, and the command that continues it."""
    exp_id = config["exp_id"]
    folder = paths.experiment_dir(exp_id) / "model_cache"
    prefix = f"{config['model']}_{config['dataset']}_epoch"
    epochs = sorted(int(p.name[len(prefix):-4]) for p in folder.glob(f"{prefix}*.tar") if p.name[len(prefix):-4].isdigit())
    if not epochs:
        return (f"Interrupted: experiment {exp_id} saved no epoch checkpoint yet, so there is nothing to resume "
                f"({paths.experiment_dir(exp_id)} holds only TensorBoard events). Start again with a new --exp_id.")
    return (f"Interrupted: experiment {exp_id} keeps the checkpoints of epoch(s) {', '.join(map(str, epochs))} in "
            f"{folder} (the best model file is written when training ends). Continue training with the same command "
            f"plus --epoch {epochs[-1]} --exp_id {exp_id}.")
