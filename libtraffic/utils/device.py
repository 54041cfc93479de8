"""Device choice: GPU when asked and present, else CPU with one log line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from libtraffic.utils.errors import LibTrafficError


def get_device(config: Mapping[str, Any], logger: logging.Logger) -> torch.device:
    if not config["gpu"]:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        logger.info("gpu is true but no CUDA device is available: running on the CPU.")
        return torch.device("cpu")
    gpu_id = config["gpu_id"]
    if not 0 <= gpu_id < torch.cuda.device_count():
        raise LibTrafficError(f"gpu_id {gpu_id} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return torch.device(f"cuda:{gpu_id}")
