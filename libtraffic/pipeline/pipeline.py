"""run_model: one training + evaluation run, LibCity's run_model.py behaviour."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any


from libtraffic.config import ConfigParser
from libtraffic.data import get_dataset
from libtraffic.executor import get_executor
from libtraffic.model import get_model
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.logger import get_logger
from libtraffic.utils.device import set_threads
from libtraffic.utils.seed import set_random_seed


def new_exp_id() -> int:
    """A random experiment id whose folder does not exist yet."""
    rng = random.SystemRandom()
    while True:
        exp_id = rng.randint(0, 100000)
        if not paths.experiment_dir(exp_id).exists():
            return exp_id


def run_model(task: str | None = None, model_name: str | None = None, dataset_name: str | None = None,
              config_file: str | None = None, saved_model: bool | None = None, train: bool | None = None,
              other_args: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Train (unless train is false) and test one model; returns the test metrics.

    Files: libtraffic/log/<exp_id>-..., libtraffic/cache/<exp_id>/{model_cache,evaluate_cache,...}.
    """
    config = ConfigParser(task or "traffic_state_pred", model_name or "GRU", dataset_name or "METR_LA",
                          config_file, saved_model, train, other_args)
    exp_id = config["exp_id"]
    if exp_id is None:
        config["exp_id"] = exp_id = new_exp_id()
    elif config["train"] and config["epoch"] == 0 and paths.experiment_dir(exp_id).exists():
        raise LibTrafficError(
            f"Experiment folder {paths.experiment_dir(exp_id)} already exists; choose a new --exp_id, "
            "or pass --train false to evaluate its saved model (or --epoch N to resume training from it)."
        )
    logger = get_logger(config)
    logger.info("Begin pipeline, task=%s, model_name=%s, dataset_name=%s, exp_id=%s",
                config["task"], config["model"], config["dataset"], exp_id)
    config.log_sources(logger)
    set_threads(config, logger)
    set_random_seed(config["seed"])
    dataset = get_dataset(config)
    train_data, valid_data, test_data = dataset.get_data()
    data_feature = dataset.get_data_feature()
    logger.info("Data: %d nodes, %d features, split %s samples (train/valid/test)",
                data_feature["num_nodes"], data_feature["feature_dim"], dataset.prepared.split)
    model = get_model(config, data_feature)
    executor = get_executor(config, model, data_feature, logger)
    model_file = paths.model_cache_file(exp_id, config["model"], config["dataset"])
    if config["train"] or not model_file.exists():
        if not config["train"]:
            raise LibTrafficError(f"--train false but there is no saved model {model_file}; train it first.")
        executor.train(train_data, valid_data)
        if config["saved_model"]:
            use_best = config["load_best_epoch"] and executor.best_state is not None
            executor.save_model(model_file, executor.best_state if use_best else executor.state(executor.start_epoch - 1))
    else:
        executor.load_model(model_file)
    return executor.evaluate(test_data)
