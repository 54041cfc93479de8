"""Executors, found by name through EXECUTORS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from libtraffic.executor.dcrnn_executor import DCRNNExecutor
from libtraffic.executor.mtgnn_executor import MTGNNExecutor
from libtraffic.executor.traffic_state_executor import TrafficStateExecutor
from libtraffic.utils.registry import lookup

EXECUTORS = {"TrafficStateExecutor": TrafficStateExecutor, "DCRNNExecutor": DCRNNExecutor, "MTGNNExecutor": MTGNNExecutor}


def get_executor(config: Mapping[str, Any], model: nn.Module, data_feature: Mapping[str, Any],
                 logger: logging.Logger | None = None) -> TrafficStateExecutor:
    cls = lookup(EXECUTORS, config["executor"], "executor", where="--executor / task_config.json")
    return cls(config, model, data_feature, logger)


__all__ = ["DCRNNExecutor", "EXECUTORS", "MTGNNExecutor", "TrafficStateExecutor", "get_executor"]
