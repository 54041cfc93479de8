"""The options of a tuning run (hyper_tune.py's own flags): one dataclass, its defaults defined once.

hyper_tune.py builds its argparse flags from the fields (name, type, default, help), and
hyper_parameter() takes them as keyword arguments. Importing this module loads neither torch nor
Ray, so --help answers at once.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from libtraffic.utils.cli import str2bool
from libtraffic.utils.errors import LibTrafficError


def _option(default: Any, kind: Callable[[str], Any], help: str, switch: bool = False) -> Any:
    """A field with its command-line type and help; ``switch``: a bare ``--flag`` means true."""
    return field(default=default, metadata={"type": kind, "help": help, "switch": switch})


@dataclass(frozen=True)
class TuneOptions:
    space_file: str = _option("hyper_example", str, "search space JSON: NAME (./NAME.json) or a path (LibCity's "
                              "hyper_example: learning_rate in 0.01 / 0.005 / 0.001)")
    search_alg: str = _option("BasicSearch", str, "BasicSearch (random/grid), HyperOpt, BayesOptSearch or OptunaSearch")
    scheduler: str = _option("FIFO", str, "FIFO, ASHA, MedianStoppingRule or HyperBand")
    num_samples: int = _option(5, int, "number of sampled trials (times each grid point)")
    max_concurrent: int = _option(1, int, "trials running at once")
    cpu_per_trial: int = _option(1, int, "CPUs (torch threads) per trial")
    gpu_per_trial: float | None = _option(None, float, "GPUs per trial, a fraction (0.25) shares a GPU (default 1 if "
                                          "the cluster has a GPU, else 0)")
    resume: bool = _option(False, str2bool, "continue the interrupted experiment --exp_id", switch=True)
    dry_run: bool = _option(False, str2bool, "validate and build every corner of the space without training", switch=True)
    time_budget_s: float | None = _option(None, float, "stop starting/continuing trials after this many seconds (default: no limit)")
    ray_address: str | None = _option(None, str, "Ray cluster to join, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, "
                                      "else a private local instance)")
    storage_path: str | None = _option(None, str, "folder every node sees (NFS) or URI (s3://bucket/path) holding "
                                       "the experiment (default ./libtraffic/cache/hyper_tune)")
    metric: str | None = _option(None, str, "what ranks trials and picks each trial's best epoch, on the validation "
                                 "split: loss (default, the validation loss), or an evaluator metric (MAE, MAPE, MSE, "
                                 "RMSE, masked_MAE, masked_MAPE, masked_MSE, masked_RMSE, R2, EVAR) as the mean over "
                                 "horizons (masked_MAE) or at one horizon (masked_MAE@12); R2 and EVAR are maximised")
    final_seeds: int = _option(0, int, "after the search, retrain the best configuration(s) this many times with "
                               "fresh seeds and report test metrics as mean ± std (0: no retraining; else at least 2)")
    final_top: int = _option(1, int, "how many of the best configurations --final_seeds retrains")
    verbose: bool = _option(False, str2bool, "also print Ray Tune's trial status table every 30 s (without it: one line "
                            "per finished trial, with the search's progress and time left)", switch=True)

    @classmethod
    def from_arguments(cls, values: dict[str, Any]) -> "TuneOptions":
        """Options from keyword arguments; None keeps a field's default. An unknown name is a TypeError, as
        for any function."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"hyper_parameter() got unexpected keyword argument(s) {', '.join(unknown)}")
        return replace(cls(), **{k: v for k, v in values.items() if v is not None})

    def check(self) -> None:
        """Raise the first of problems()."""
        for problem in self.problems():
            raise LibTrafficError(problem)

    def problems(self) -> list[str]:
        """Counts and resources that can be checked before anything starts (fails fast, never hangs): one
        message per problem.

        With a private local instance this machine is the cluster; a cluster's resources are checked
        once it is joined (session.check_resources)."""
        found = [f"--{name} must be at least 1, got {getattr(self, name)}."
                 for name in ("num_samples", "max_concurrent", "cpu_per_trial") if getattr(self, name) < 1]
        gpu = self.gpu_per_trial
        bad_gpu = gpu is not None and (not math.isfinite(gpu) or gpu < 0 or (gpu > 1 and gpu != int(gpu)))
        if bad_gpu:
            found.append(f"--gpu_per_trial {gpu:g} cannot be satisfied: give a whole number of GPUs or a "
                         "fraction between 0 and 1 (e.g. 0.25: four trials share a GPU).")
        if not (self.ray_address or os.environ.get("RAY_ADDRESS")):
            import torch

            cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
            if self.cpu_per_trial > cores:
                found.append(f"--cpu_per_trial {self.cpu_per_trial} exceeds the {cores} CPU(s) of this "
                             "machine; no trial could ever start.")
            if gpu is not None and not bad_gpu and gpu > gpus:
                found.append(
                    f"--gpu_per_trial {gpu:g} cannot be satisfied: this machine has {gpus} GPU(s), so every trial "
                    "would wait forever. Use --gpu_per_trial 0 to train on the CPU.")
        if self.final_seeds != 0 and self.final_seeds < 2:
            found.append(f"--final_seeds must be 0 (no retraining) or at least 2 (a spread needs two runs), "
                         f"got {self.final_seeds}.")
        if self.final_top < 1:
            found.append(f"--final_top must be at least 1, got {self.final_top}.")
        if self.time_budget_s is not None and not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            found.append(f"--time_budget_s must be positive, got {self.time_budget_s}.")
        return found


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TuneOptions field, with its type, default and help."""
    for option in fields(TuneOptions):
        meta = option.metadata
        default = None if option.default is MISSING else option.default
        shown = "" if default is None or "default" in meta["help"] else f" (default {default})"
        extra = {"nargs": "?", "const": True} if meta["switch"] else {}
        parser.add_argument(f"--{option.name}", type=meta["type"], default=default, help=meta["help"] + shown,
                            **extra)


def from_namespace(args: argparse.Namespace) -> TuneOptions:
    """The TuneOptions of parsed hyper_tune.py flags."""
    return TuneOptions.from_arguments({f.name: getattr(args, f.name) for f in fields(TuneOptions)})
