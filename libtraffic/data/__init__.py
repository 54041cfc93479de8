"""Datasets, found by name through DATASETS.

The names below are imported on first use, so that the data tools that need no PyTorch
(``python -m libtraffic.data.convert``, ``python -m libtraffic.data.synthetic``) start quickly.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DATASETS", "PreparedData", "TrafficStatePointDataset", "get_dataset"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'libtraffic.data' has no attribute {name!r}")
    from libtraffic.data import datasets

    return getattr(datasets, name)
