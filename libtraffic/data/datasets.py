"""Dataset classes, found by name through DATASETS (re-exported by libtraffic.data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libtraffic.data.point_dataset import TrafficStatePointDataset
from libtraffic.data.prepared import PreparedData
from libtraffic.utils.registry import lookup

DATASETS = {"TrafficStatePointDataset": TrafficStatePointDataset}


def get_dataset(config: Mapping[str, Any], prepared: PreparedData | None = None) -> TrafficStatePointDataset:
    cls = lookup(DATASETS, config["dataset_class"], "dataset_class", where="--dataset_class / task_config.json")
    return cls(config, prepared)


__all__ = ["DATASETS", "PreparedData", "TrafficStatePointDataset", "get_dataset"]
