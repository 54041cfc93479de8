"""Logging to the terminal and to libtraffic/log/<exp_id>-<model>-<dataset>-<time>.log."""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Mapping
from typing import Any

from libtraffic.utils import paths

FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def get_logger(config: Mapping[str, Any], name: str = "libtraffic") -> logging.Logger:
    """The 'libtraffic' logger with a console handler and a fresh log file for this run."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    stamp = datetime.datetime.now().strftime("%b-%d-%Y_%H-%M-%S")
    log_file = paths.log_dir() / f"{config['exp_id']}-{config['model']}-{config['dataset']}-{stamp}.log"
    paths.make_dir(log_file.parent)
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter(FORMAT))
    file_handler.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(FORMAT))
    console.setLevel(LEVELS.get(str(config["log_level"]).upper(), logging.INFO))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    logger.propagate = False
    logger.info("Log file: %s", log_file)
    return logger

