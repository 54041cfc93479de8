"""ConfigParser: one merged config dict built from JSON layers in LibCity's precedence.

Layers, highest first:
  1. overrides: command-line flags, and during tuning the sampled values (they win over flags)
  2. --config_file
  3. model defaults        config/model/<task>/<model_config>.json (RNN.json for GRU, LSTM, RNN)
  4. dataset-class defaults config/data/<dataset_class>.json
  5. executor defaults (TrafficStateExecutor.json, under an executor's own file), then evaluator
     defaults, then config/base.json
  6. the dataset's raw_data/<DATASET>/config.json (its ``info`` block flattened)
  7. config/data/dataset_info.json (defaults of the ``info`` keys a dataset may omit)

Every key's type is that of its default; a value of another type, or a key no layer knows, is
refused where the user typed it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from libtraffic.config.ranges import out_of_range
from libtraffic.data.synthetic import ensure_builtin_dataset
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.jsonio import find_json_file, load_json
from libtraffic.utils.registry import did_you_mean, lookup
from libtraffic.utils.values import parse_bool

#: LibCity config keys that have no effect here -> why; a LibCity config file with them still runs.
LIBCITY_IGNORED: dict[str, str] = load_json(paths.CONFIG_DIR / "libcity_ignored.json", "defaults")
# Keys of a dataset config.json that describe the atomic-file schema rather than settings.
_SCHEMA_BLOCKS = {"geo", "rel", "dyna", "ext", "grid", "od", "usr", "info"}
REQUIRED_ATOMIC = (".geo", ".dyna")
#: Longest --exp_id: it starts the log file's name (<exp_id>-<model>-<dataset>-<time>.log), at most 255 bytes.
MAX_EXP_ID_CHARS = 100
#: The executor whose defaults every executor shares; config/executor/<Other>.json holds only the keys it adds.
BASE_EXECUTOR = "TrafficStateExecutor"


def _load_task_config() -> dict:
    return load_json(paths.CONFIG_DIR / "task_config.json", "task config")


def resolve_task_model(task: str, model: str) -> dict:
    """Return the task_config entry of ``model`` (dataset_class, executor, evaluator)."""
    tasks = _load_task_config()
    task_entry = lookup(tasks, task, "task", where="--task")
    allowed = task_entry["allowed_model"]
    if model not in allowed:
        other = [t for t, e in tasks.items() if model in e["allowed_model"]]
        if other:
            raise LibTrafficError(
                f"Model '{model}' is not allowed for task '{task}' (it belongs to {', '.join(other)}). "
                f"Models of '{task}': {', '.join(allowed)}."
            )
        raise LibTrafficError(
            f"Unknown model '{model}' (from --model).{did_you_mean(model, allowed)} "
            f"Models of task '{task}': {', '.join(allowed)}."
        )
    return task_entry[model]


def model_config_keys(task: str, model: str) -> list[str]:
    """The keys of ``model``'s defaults file that are its own: not also data, executor or evaluator keys."""
    entry = resolve_task_model(task, model)
    own = load_json(paths.CONFIG_DIR / "model" / task / f"{entry.get('model_config', model)}.json", "defaults")
    shared: set[str] = set()
    for kind, folder in (("dataset_class", "data"), ("executor", "executor"), ("evaluator", "evaluator")):
        shared |= set(load_json(paths.CONFIG_DIR / folder / f"{entry[kind]}.json", "defaults"))
    return [k for k in own if k not in shared]


def dataset_config_path(dataset: str, data_path: str = "") -> Path:
    """raw_data/<dataset>/config.json (or <data_path>/config.json), after checking the folder exists."""
    folder = paths.raw_data_dir(dataset, data_path)
    if not data_path:
        ensure_builtin_dataset(dataset, folder.parent)
    if not folder.is_dir():
        where = f"data_path {data_path!r}: " if data_path else ""
        raise LibTrafficError(
            f"Dataset '{dataset}' not found: {where}the folder {folder} does not exist.\n"
            f"Put LibCity atomic files there: {dataset}.geo, {dataset}.rel, {dataset}.dyna and config.json "
            f"(optionally {dataset}.ext). LibCity's converted datasets (METR_LA, PEMS_BAY, LOS_LOOP, ...) "
            "load unchanged; copy their folders into ./raw_data/.\n"
            f"To try the pipeline without downloads, generate data in the same schema:\n"
            f"    python -m libtraffic.data.synthetic --dataset {dataset} --num_nodes 207 --num_days 119\n"
            "or use the built-in dataset: --dataset SYNTH_LA"
        )
    path = folder / "config.json"
    if not path.is_file():
        raise LibTrafficError(
            f"Dataset '{dataset}' has no config.json in {folder}. It must describe the atomic files, "
            'e.g. {"info": {"data_col": ["traffic_speed"], "weight_col": "cost", "output_dim": 1, '
            '"time_intervals": 300}} (see LibCity\'s raw_data/METR_LA/config.json).'
        )
    return path


def _dataset_layer(dataset: str, data_path: str) -> dict:
    path = dataset_config_path(dataset, data_path)
    raw = load_json(path, "dataset config")
    if not isinstance(raw, dict):
        raise LibTrafficError(f"The dataset config {path} must be a JSON object, got {type(raw).__name__}.")
    layer = {k: v for k, v in raw.items() if k not in _SCHEMA_BLOCKS}
    info = raw.get("info", {})
    if not isinstance(info, dict):
        raise LibTrafficError(f"The 'info' entry of {path} must be a JSON object.")
    layer.update(info)
    return layer


def _config_file_layer(config_file: str) -> tuple[str, dict]:
    """(source label, content) of --config_file."""
    path = find_json_file(config_file, "Config file")
    data = load_json(path, "config file")
    if not isinstance(data, dict):
        raise LibTrafficError(f"The config file {path} must hold a JSON object of config keys.")
    return f"config file {path.name}", data


def coerce_value(key: str, value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of ``default``; strings from the command line are parsed.

    Returns the value converted to the default's type, or raises LibTrafficError naming ``where``.
    """
    from_cli = isinstance(value, str) and where.startswith("--")
    quoted = isinstance(value, str) and not from_cli and not isinstance(default, (str, list)) and default is not None
    bad = LibTrafficError(
        f"Bad value {value!r} for '{key}' ({where}): expected {_type_name(default)} "
        f"like the default {json.dumps(default)}."
        + (f" In a JSON file, write {_type_name(default)} without quotes." if quoted else "")
    )
    if default is None:
        if from_cli:
            try:
                number = int(value)
            except ValueError:
                return value
            return number if str(number) == value else value  # --exp_id 007 stays '007'
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if from_cli and parse_bool(value) is not None:
            return parse_bool(value)
        raise bad
    if isinstance(default, (int, float)):
        if from_cli:
            try:
                value = float(value) if any(c in value.lower() for c in ".en") else int(value)
            except ValueError as err:
                raise bad from err
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise bad
        if isinstance(default, int):
            if math.isinf(value) or float(value) != int(value):
                raise bad
            return int(value)
        return float(value)
    if isinstance(default, list):
        if from_cli:
            value = _parse_cli_list(value)
        return value if isinstance(value, list) else [value]
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _parse_cli_list(text: str) -> list:
    if text.strip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    items = []
    for part in text.split(","):
        part = part.strip()
        try:
            items.append(json.loads(part))
        except json.JSONDecodeError:
            items.append(part)
    return items


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, list):
        return "a list"
    return "a string"


class ConfigParser(Mapping):
    """The merged configuration of one run; behaves as a read-only dict of flat keys.

    ``other_args`` are command-line values (strings are parsed with the key's type). A config is
    never changed: ``with_overrides`` derives a new one (a tuning trial's sampled values, the id a
    new experiment claims).
    """

    def __init__(
        self,
        task: str,
        model: str,
        dataset: str,
        config_file: str | None = None,
        saved_model: bool | None = None,
        train: bool | None = None,
        other_args: Mapping[str, Any] | None = None,
    ) -> None:
        entry = resolve_task_model(task, model)
        cli = {k: v for k, v in (other_args or {}).items() if v is not None}
        for key, value in (("saved_model", saved_model), ("train", train)):
            if value is not None:
                cli[key] = value
        components = {
            name: cli.get(name) or entry[name] for name in ("dataset_class", "executor", "evaluator")
        }
        file_layer = _config_file_layer(config_file) if config_file else None
        # data_path locates the dataset's config.json, so it is read from the layers above it first.
        data_path = cli.get("data_path", file_layer[1].get("data_path", "") if file_layer else "")
        defaults: list[tuple[str, dict]] = [
            ("dataset info defaults", load_json(paths.CONFIG_DIR / "data" / "dataset_info.json", "defaults")),
            (f"raw_data/{dataset}/config.json", _dataset_layer(dataset, str(data_path or ""))),
            ("config/base.json", load_json(paths.CONFIG_DIR / "base.json", "defaults")),
        ]
        for kind, folder in (("evaluator", "evaluator"), ("executor", "executor"), ("dataset_class", "data")):
            path = paths.CONFIG_DIR / folder / f"{components[kind]}.json"
            if not path.is_file():
                valid = sorted(p.stem for p in path.parent.glob("*.json") if p.stem != "dataset_info")
                raise LibTrafficError(
                    f"Unknown {kind} '{components[kind]}'.{did_you_mean(components[kind], valid)} "
                    f"Valid: {', '.join(valid)}."
                )
            if kind == "executor" and components[kind] != BASE_EXECUTOR:
                # An executor built on TrafficStateExecutor adds its own keys to the shared ones.
                base = paths.CONFIG_DIR / folder / f"{BASE_EXECUTOR}.json"
                defaults.append((f"{folder}/{base.name}", load_json(base, "defaults")))
            defaults.append((f"{folder}/{path.name}", load_json(path, "defaults")))
        # As LibCity, GRU / LSTM / RNN share one defaults file (RNN.json) and the model name sets rnn_type.
        model_file = f"{entry.get('model_config', model)}.json"
        defaults.append((f"model/{task}/{model_file}", load_json(paths.CONFIG_DIR / "model" / task / model_file, "defaults")))
        fixed = {"task": task, "model": model, "dataset": dataset, **components}
        if "rnn_type" in entry:
            fixed["rnn_type"] = entry["rnn_type"]
        # Types come from our defaults first: a dataset's config.json can add keys, not retype ours.
        self._dataset_source = defaults[1][0]
        self._types: dict[str, Any] = dict(fixed)
        for source, layer in sorted(defaults, key=lambda item: item[0] == self._dataset_source):
            for key, value in layer.items():
                if self._types.get(key) is None:
                    self._types[key] = value
        self._config: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.ignored: dict[str, str] = {}  # LibCity keys we accept but do not use -> why
        for source, layer in defaults:
            self._apply(layer, source, check=False)
        if file_layer:
            self._apply(file_layer[1], file_layer[0], check=True)
        self._apply(fixed, "command line", check=False)
        self._apply(cli, "command line", check=True)
        self._config_file = config_file
        self._check_ranges(self._config)
        exp_id = self._config.get("exp_id")
        if exp_id is not None and len(str(exp_id)) > MAX_EXP_ID_CHARS:
            raise LibTrafficError(
                f"--exp_id is {len(str(exp_id))} characters long; keep it to {MAX_EXP_ID_CHARS} or fewer: it names "
                "the experiment's folder and log file, and a file name may be at most 255 bytes.")

    def _apply(self, layer: Mapping[str, Any], source: str, check: bool) -> None:
        for key, value in layer.items():
            if check and key not in self._types and key in LIBCITY_IGNORED:
                self.ignored[key] = f"{LIBCITY_IGNORED[key]} (from {source})"
                continue
            if check:
                value = self._checked(key, value, source)
            elif isinstance(value, str) and isinstance(self._types.get(key), list):
                value = [value]  # "data_col": "speed" in a dataset's config.json means ["speed"]
            elif source == self._dataset_source and value is not None and isinstance(self._types.get(key), (int, float)):
                # A dataset's config.json may hold "input_window": "12" or "calculate_weight_adj": "false".
                value = coerce_value(key, value, self._types[key], source)
            self._config[key] = value
            self.sources[key] = source

    def _checked(self, key: str, value: Any, source: str) -> Any:
        where = f"--{key}" if source == "command line" else source
        if key not in self._types:
            raise LibTrafficError(
                f"Unknown config key '{key}' ({where}).{did_you_mean(key, self._types)} "
                "Known keys are those in the model, dataset-class, executor and evaluator defaults "
                "(libtraffic/config/) and the dataset's config.json."
            )
        return coerce_value(key, value, self._types[key], where)

    def _check_ranges(self, values: Mapping[str, Any]) -> None:
        """Refuse a value outside its key's meaningful range (config/ranges.py), naming its source."""
        for key, value in values.items():
            why = out_of_range(key, value)
            if why:
                source = self.sources.get(key, "")
                where = f"--{key}" if source == "command line" else source
                raise LibTrafficError(f"{why} (from {where}).")

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "search space") -> "ConfigParser":
        """A new ConfigParser equal to this one with ``overrides`` on top (this one is untouched)."""
        clone = object.__new__(ConfigParser)
        clone._types = self._types
        clone._config = dict(self._config)
        clone.sources = dict(self.sources)
        clone.ignored = dict(self.ignored)
        clone._config_file = self._config_file
        clone._dataset_source = self._dataset_source
        clone._apply(dict(overrides), source, check=True)
        clone._check_ranges({k: clone._config[k] for k in overrides if k in clone._config})
        return clone

    def known_keys(self) -> list[str]:
        return sorted(self._types)

    def default_of(self, key: str) -> Any:
        return self._types[key]

    def __getitem__(self, key: str) -> Any:
        return self._config[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._config)

    def __len__(self) -> int:
        return len(self._config)

    def log_sources(self, logger: logging.Logger) -> None:
        """Each value's source (debug), and a warning for each LibCity key that has no effect here."""
        for key in sorted(self._config):
            logger.debug("config %s = %r  (from %s)", key, self._config[key], self.sources[key])
        for key, why in self.ignored.items():
            logger.warning("Config key '%s' is ignored: %s.", key, why)
