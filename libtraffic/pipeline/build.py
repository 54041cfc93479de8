"""One place where a run is built from a merged config: dataset -> data features -> model -> executor
(which holds the evaluator). run_model, the tuning trials, the final runs, the end of a search and the
dry run all call build_run; components are found by name through their registries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from libtraffic.data import TrafficStatePointDataset, get_dataset
from libtraffic.data.prepared import PreparedData, RawData, prepared_for
from libtraffic.executor import TrafficStateExecutor, get_executor
from libtraffic.model import get_model
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
    model = get_model(config, data_feature)
    executor = get_executor(config, model, data_feature, logger)
    return Run(config, dataset, data_feature, model, executor, train_data, valid_data, test_data)
