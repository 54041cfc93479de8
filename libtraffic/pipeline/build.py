"""One place where a run is built from a merged config: dataset -> data features -> model -> executor
(which holds the evaluator). run_model, the tuning trials, the final runs, the end of a search and the
dry run all call build_run; components are found by name through their registries."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from libtraffic.config.config_parser import model_config_keys
from libtraffic.data import TrafficStatePointDataset, get_dataset
from libtraffic.data.prepared import PreparedData, RawData, prepared_for
from libtraffic.executor import TrafficStateExecutor, get_executor
from libtraffic.model import get_model
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.seed import set_random_seed


@dataclass
class Run:
    """A built run: its loaders, data features, model and executor (the executor holds the evaluator)."""

    config: Mapping[str, Any]
    dataset: TrafficStatePointDataset
    data_feature: dict[str, Any]
    model: nn.Module
    executor: TrafficStateExecutor
    train_data: DataLoader
    valid_data: DataLoader
    test_data: DataLoader


def build_run(config: Mapping[str, Any], data: PreparedData | RawData | None = None,
              logger: logging.Logger | None = None) -> Run:
    """Seed with config['seed'], then build every component of a run.

    ``data``: None reads the dataset's files (through the prepared-data cache); prepared data is
    used as it is; raw arrays (a tuning trial whose space tunes data settings) are cut and scaled
    for this config."""
    set_random_seed(config["seed"])
    dataset = get_dataset(config, None if data is None else prepared_for(data, config))
    train_data, valid_data, test_data = dataset.get_data()
    data_feature = dataset.get_data_feature()
    try:
        model = get_model(config, data_feature)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if not isinstance(err, (torch.OutOfMemoryError, MemoryError)) and "allocate" not in str(err):
            raise
        tried = re.search(r"allocate (\d+) bytes", str(err))
        size = f" (it tried to allocate {int(tried.group(1)) / 2**30:,.1f} GiB)" if tried else ""
        keys = ", ".join(f"{k} {config[k]}" for k in model_config_keys(config["task"], config["model"])
                         if isinstance(config[k], int) and not isinstance(config[k], bool))
        raise LibTrafficError(
            f"Building model {config['model']} ran out of memory{size}. Check its size settings ({keys}) "
            f"and the dataset's {data_feature['num_nodes']} sensors; choose smaller values.") from err
    executor = get_executor(config, model, data_feature, logger)
    return Run(config, dataset, data_feature, model, executor, train_data, valid_data, test_data)
