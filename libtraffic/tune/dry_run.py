"""--dry_run: build every real component for the corners of the search space, train nothing.

A space is checked cheaply, without the combinatorial product: one sampled base configuration,
then that base with one entry changed to each of its corner values (every listed value, both ends
of a range). Each candidate goes through the real ConfigParser, dataset (the atomic files are
read and prepared once per distinct data setting), model, optimiser, LR scheduler and evaluator,
so a value that would fail at the start of training fails here, named with its space entry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from libtraffic.config import ConfigParser
from libtraffic.config.config_parser import model_config_keys
from libtraffic.data import get_dataset
from libtraffic.data.prepared import DATA_KEYS, PreparedData
from libtraffic.pipeline.build import build_run
from libtraffic.tune.context import TuneRun
from libtraffic.tune.final_runs import describe as describe_final_runs
from libtraffic.tune.spaces import SearchSpace
from libtraffic.utils.errors import LibTrafficError

# What building a component with a bad value raises: user mistakes, and the errors PyTorch
# raises for impossible arguments (reported too, since they would end the trial the same way).
_BUILD_ERRORS = (LibTrafficError, ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError)


class Problems:
    """The problems found while checking a tuning run's flags and space file. A real run stops at the first
    (``collect`` false: it raises at once); --dry_run collects them all and lists them together."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.found: list[str] = []

    def add(self, message: str) -> None:
        if not self.collect:
            raise LibTrafficError(message)
        self.found.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        for message in messages:
            self.add(message)

    def call(self, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``check(*args, **kwargs)``; None (the problem noted) if it raises a LibTrafficError while collecting."""
        try:
            return check(*args, **kwargs)
        except LibTrafficError as err:
            if not self.collect:
                raise
            self.found.append(str(err))
            return None


@dataclass(frozen=True)
class Candidate:
    label: str  # "entry 'dropout' = 1.5 (choice)"
    sampled: dict[str, Any]


def candidates(space: SearchSpace, base: dict[str, Any]) -> list[Candidate]:
    """The fixed settings alone; each entry alone at each of its corners (so one bad value cannot
    hide another); then whole samples: ``base``, every entry at its first corner, every entry at its last."""
    result = [Candidate("the fixed settings (flags, --config_file and defaults)", {})]
    for key in space.entries:
        result += [Candidate(f"entry '{key}' = {value!r} ({note})", {key: value}) for value, note in space.corners(key)]
    first = {key: space.corners(key)[0][0] for key in space.entries}
    last = {key: space.corners(key)[-1][0] for key in space.entries}
    result += [Candidate(f"the sample {base}", base), Candidate(f"the sample {first} (first corners)", first),
               Candidate(f"the sample {last} (last corners)", last)]
    unique, seen = [], set()
    for candidate in result:
        if repr(sorted(candidate.sampled.items())) not in seen:
            seen.add(repr(sorted(candidate.sampled.items())))
            unique.append(candidate)
    return unique


def _error_text(err: BaseException) -> str:
    return str(err) if isinstance(err, LibTrafficError) else f"{type(err).__name__}: {err}"


class _Builder:
    """Builds the components of one candidate; prepares each distinct data setting once."""

    def __init__(self, config: ConfigParser) -> None:
        # The files are read (not a possibly older cache), and a dry run leaves no cache behind.
        self.config = config.with_overrides({"cache_dataset": False}, source="dry run")
        self.prepared: dict[str, PreparedData | BaseException] = {}
        self.logger = logging.getLogger("libtraffic.dry_run")

    def _prepare(self, trial: ConfigParser) -> PreparedData:
        key = repr([trial[k] for k in DATA_KEYS])
        if key not in self.prepared:
            try:
                self.prepared[key] = get_dataset(trial).prepare()  # checks the data settings first
            except _BUILD_ERRORS as err:
                self.prepared[key] = err
        found = self.prepared[key]
        if isinstance(found, BaseException):
            raise found
        return found

    def build(self, sampled: dict[str, Any]) -> None:
        trial = self.config.with_overrides(sampled)
        build_run(trial, self._prepare(trial), self.logger)


def check_space(config: ConfigParser, space: SearchSpace, seed: int, extra: Callable[[], None] | None = None,
                found: Iterable[str] = ()) -> int:
    """Build every candidate; raise one LibTrafficError listing every problem (``found`` before, the flags' and
    space file's), or return how many configurations were built. ``extra`` runs one more check (the
    experiment id) and may raise."""
    builder = _Builder(config)
    base = space.sample(np.random.default_rng(seed), 1)[0]
    problems: list[str] = list(found)
    reported: set[str] = set()  # an error already shown (by the fixed settings or one entry) is not repeated
    built = 0
    for candidate in candidates(space, base):
        try:
            builder.build(candidate.sampled)
            built += 1
        except _BUILD_ERRORS as err:
            text = _error_text(err)
            if text not in reported:
                reported.add(text)
                problems.append(f"{candidate.label}: {text}")
    if extra is not None:
        try:
            extra()
        except LibTrafficError as err:
            problems.append(str(err))
    if problems:
        raise LibTrafficError(
            f"Dry run: {len(problems)} problem(s) found before any training (space file {space.path}):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix the space file, the flags or the dataset, then run again."
        )
    return built


def dry_run(run: TuneRun, problems: Problems, check_exp_id: Callable[[], None]) -> None:
    """--dry_run: print which flags the space file overrides and a few sampled configurations, then build
    every corner of the space and check the experiment id (``check_exp_id`` raises); every problem (those
    ``problems`` found in the flags and the space file too) is reported together. Nothing is written."""
    config, space, options = run.config, run.space, run.options
    rng = np.random.default_rng(run.sampler_seed)
    trials = run.expected_trials
    finals = f", {describe_final_runs(options.final_seeds, options.final_top, trials)}" if options.final_seeds else ""
    if problems.found:
        print(f"Dry run: {len(problems.found)} problem(s) found in the flags and space file, listed at the end. With "
              f"the valid entries of space file {space.path}, {trials} trial(s) would run{finals}. Sampled configurations:")
    else:
        print(f"Dry run: space file {space.path} is valid for --search_alg {options.search_alg}; {trials} trial(s) "
              f"would run{finals}. Sampled configurations:")
    for i, sampled in enumerate(space.sample(rng, min(trials, 5))):
        try:
            trial = config.with_overrides(sampled)
        except LibTrafficError:  # a value out of its range: listed with the other problems below
            print(f"  [{i}] sampled {sampled}")
            continue
        shown = {k: trial[k] for k in ("model", "dataset", "hidden_size", "num_layers", "dropout", "learning_rate",
                                       "max_epoch", "batch_size", "input_window", "output_window", "scaler") if k in trial}
        print(f"  [{i}] sampled {sampled}\n      resolved {shown | sampled}")
    for note in override_notes(config, space):
        print(f"Note: {note}")
    print(tunable_keys(config))
    built = check_space(config, space, run.sampler_seed, check_exp_id, problems.found)
    print(f"Dry run: built the dataset, model, optimiser, LR scheduler and evaluator of {built} configuration(s) "
          "(a base sample and every corner of each entry): no problem found. Nothing was trained.")


def override_notes(config: ConfigParser, space: SearchSpace) -> list[str]:
    """One note per value the user set (flag or --config_file) that the space file's entry replaces in every trial."""
    notes = []
    for key in space.entries:
        source = config.sources.get(key, "")
        if source == "command line":
            notes.append(f"{key} in the space file overrides --{key} {json.dumps(config[key])} (every trial takes "
                         "the space file's value).")
        elif source.startswith("config file"):
            notes.append(f"{key} in the space file overrides {key} = {json.dumps(config[key])} of the {source} "
                         "(every trial takes the space file's value).")
    return notes


def tunable_keys(config: ConfigParser) -> str:
    """The model's own config keys with their values (what a space file for it can tune), and where the others are."""
    own = model_config_keys(config["task"], config["model"])
    listed = ", ".join(f"{k} ({json.dumps(config[k])})" for k in own) or "none"
    return (f"Tunable keys of {config['model']} (its own, with this run's values): {listed}; and any training, data or "
            "evaluation key (learning_rate, batch_size, weight_decay, input_window, scaler, ...; libtraffic/config/).")
