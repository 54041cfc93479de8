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
        # Said when the user asked for a GPU; gpu true is everyone's default, so otherwise only at debug level.
        source = getattr(config, "sources", {}).get("gpu", "")
        asked = source == "command line" or source.startswith("config file")
        logger.log(logging.INFO if asked else logging.DEBUG,
                   "gpu is true but no CUDA device is available: running on the CPU.")
        return torch.device("cpu")
    gpu_id = config["gpu_id"]
    if not 0 <= gpu_id < torch.cuda.device_count():
        raise LibTrafficError(f"gpu_id {gpu_id} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return torch.device(f"cuda:{gpu_id}")


def set_threads(config: Mapping[str, Any], logger: logging.Logger) -> None:
    """torch's CPU threads from ``num_threads`` (0 keeps torch's default, one per core).

    One thread is the default: on a busy machine torch's default threads wait on each other and
    an epoch gets several times slower, while on an idle 2-core machine one thread costs little
    (bench/bench_threads.py, bench/RESULTS.md).
    """
    threads = config["num_threads"]
    if threads < 0:
        raise LibTrafficError(f"num_threads must be >= 0 (0 = torch's default, one per core), got {threads}.")
    if threads:
        torch.set_num_threads(threads)
    logger.debug("torch uses %d CPU thread(s)", torch.get_num_threads())
