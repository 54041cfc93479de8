"""Search-space files: LibCity's JSON format -> validated Ray Tune sample functions.

    {"learning_rate": {"type": "choice", "list": [0.01, 0.005, 0.001]},
     "max_epoch":     {"type": "randint", "lower": 2, "upper": 10},
     "dropout":       {"type": "uniform", "lower": 0.1, "upper": 0.6}}

Every failure names the file and the entry, says what is wrong and what to write instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from libtraffic.config.config_parser import ConfigParser, coerce_value
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.jsonio import find_json_file, load_json
from libtraffic.utils.registry import did_you_mean


@dataclass(frozen=True)
class SpaceType:
    """One entry type: Ray sampler builder, required and optional keys, and what it yields."""

    build: Callable[[dict], Any]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    doc: str
    continuous: bool  # draws non-integral floats


SPACE_TYPES: dict[str, SpaceType] = {
    "uniform": SpaceType(lambda e: tune.uniform(e["lower"], e["upper"]), ("lower", "upper"), (),
                         "float uniformly in [lower, upper)", True),
    "loguniform": SpaceType(lambda e: tune.loguniform(e["lower"], e["upper"]),
                            ("lower", "upper"), (), "float log-uniformly in [lower, upper), 0 < lower", True),
    "quniform": SpaceType(lambda e: tune.quniform(e["lower"], e["upper"], e["q"]), ("lower", "upper", "q"), (),
                          "float uniformly in [lower, upper], rounded to a multiple of q", True),
    "randn": SpaceType(lambda e: tune.randn(e["mean"], e["sd"]), ("mean", "sd"), (),
                       "float from a normal distribution (sd > 0)", True),
    "randint": SpaceType(lambda e: tune.randint(e.get("lower", 0), e["upper"]), ("upper",), ("lower",),
                         "integer in [lower, upper), upper excluded; lower defaults to 0", False),
    # Ray's qrandint leaves out `upper` when q is 1; randint(lower, upper + 1) keeps it in.
    "qrandint": SpaceType(lambda e: tune.qrandint(e["lower"], e["upper"], e["q"]) if e["q"] != 1
                          else tune.randint(e["lower"], e["upper"] + 1), ("lower", "upper", "q"), (),
                          "integer in [lower, upper], upper included, a multiple of q", False),
    "lograndint": SpaceType(lambda e: tune.lograndint(e["lower"], e["upper"]), ("lower", "upper"), (),
                            "integer log-uniformly in [lower, upper), 0 < lower", False),
    "choice": SpaceType(lambda e: tune.choice(e["list"]), ("list",), (), "one of the values in list", False),
    "grid_search": SpaceType(lambda e: tune.grid_search(e["list"]), ("list",), (),
                             "every value in list (each combination is one trial per sample)", False),
}

# What each searcher can take; the reason is shown to the user.
SEARCHER_LIMITS: dict[str, tuple[set[str], str]] = {
    "BayesOptSearch": ({"uniform"}, "BayesOptSearch models only continuous uniform ranges (Ray would silently "
                       "drop log scales and quantization, and cannot use integers or lists)"),
    "HyperOpt": (set(SPACE_TYPES) - {"grid_search"}, "HyperOpt samples adaptively and cannot enumerate a grid"),
}
# Searchers offered as alternatives in those messages, in this order (OptunaSearch takes every type: optuna_space.py).
_ALTERNATIVES = ("BasicSearch", "HyperOpt", "OptunaSearch", "BayesOptSearch")


def _alternatives(search_alg: str, kinds: set[str]) -> str:
    """'BasicSearch, HyperOpt or OptunaSearch': the other searchers that take every type in ``kinds``."""
    names = [n for n in _ALTERNATIVES if n != search_alg and kinds <= SEARCHER_LIMITS.get(n, (set(SPACE_TYPES), ""))[0]]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


@dataclass
class SearchSpace:
    """Validated space: param_space for Ray, plus the raw entries for reports and dry runs."""

    path: Path
    entries: dict[str, dict]
    param_space: dict[str, Any]

    def grid_size(self) -> int:
        sizes = [len(e["list"]) for e in self.entries.values() if e["type"] == "grid_search"]
        return math.prod(sizes) if sizes else 1

    def upper_bound(self, key: str) -> float | None:
        """Largest value ``key`` can take, or None when the space does not name it."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        kind = entry["type"]
        if kind in ("choice", "grid_search"):
            return max(entry["list"])
        if kind in ("randint", "lograndint"):
            return entry["upper"] - 1
        if kind == "randn":
            return math.inf
        return entry["upper"]

    def corners(self, key: str) -> list[tuple[Any, str]]:
        """The extreme values entry ``key`` can give, each with a note for messages: every listed
        value, the ends of a range (the largest value below an excluded upper end), mean -/+ 3 sd."""
        entry = self.entries[key]
        kind = entry["type"]
        if kind in ("choice", "grid_search"):
            return [(value, kind) for value in entry["list"]]
        if kind == "randn":
            mean, sd = entry["mean"], entry["sd"]
            return [(mean - 3 * sd, "randn mean - 3 sd"), (mean + 3 * sd, "randn mean + 3 sd")]
        lower, upper = entry.get("lower", 0), entry["upper"]
        if kind in ("uniform", "loguniform"):
            return [(lower, f"{kind} lower end"), (math.nextafter(upper, -math.inf), f"{kind} just below upper {upper}")]
        if kind in ("randint", "lograndint"):
            return [(int(lower), f"{kind} lower end"), (int(upper) - 1, f"{kind} largest value (upper {upper} excluded)")]
        q = entry["q"]
        if kind == "qrandint":
            return [(int(math.ceil(lower / q) * q), "qrandint smallest value"), (int(math.floor(upper / q) * q), "qrandint largest value")]
        return [(lower, "quniform lower end"), (upper, "quniform upper end")]

    def sample(self, rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
        """``count`` configurations drawn without Ray (for --dry_run); grids enumerate first."""
        grid_keys = [k for k, e in self.entries.items() if e["type"] == "grid_search"]
        combos = list(itertools.product(*(self.entries[k]["list"] for k in grid_keys))) or [()]
        result = []
        for i in range(count):
            values = dict(zip(grid_keys, combos[i % len(combos)]))
            for key, domain in self.param_space.items():
                if key not in values:
                    values[key] = _plain(domain.sample(random_state=rng))
            result.append(values)
        return result


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


#: LibCity's default --space_file; shipped beside hyper_tune.py, used when ./hyper_example.json is absent.
DEFAULT_SPACE = "hyper_example"


def find_space_file(name: str) -> Path:
    """--space_file NAME is ./NAME.json like LibCity; a path to a .json file works too."""
    shipped = paths.PACKAGE_DIR.parent / f"{DEFAULT_SPACE}.json"
    if name == DEFAULT_SPACE and not Path(f"{name}.json").is_file() and shipped.is_file():
        return shipped
    return find_json_file(name, "Space file", " See sample_space_file.json for the format.")


def _number(path: Path, param: str, entry: dict, key: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LibTrafficError(f"{path}: entry '{param}': '{key}' must be a finite number, got {value!r}.")
    return value


def _multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q), abs_tol=1e-9)


def _check_entry(path: Path, param: str, entry: Any, config: ConfigParser) -> dict:
    where = f"{path}: entry '{param}'"
    if not isinstance(entry, dict):
        raise LibTrafficError(f'{where} must be an object like {{"type": "choice", "list": [...]}}, got {entry!r}.')
    if "type" not in entry:
        raise LibTrafficError(f"{where} has no 'type'. Valid types: {', '.join(SPACE_TYPES)}.")
    kind = entry["type"]
    if not isinstance(kind, str) or kind not in SPACE_TYPES:
        raise LibTrafficError(
            f"{where} has unknown type {kind!r}.{did_you_mean(str(kind), SPACE_TYPES)} Valid types: "
            + "; ".join(f"{n} ({', '.join(t.required + tuple(o + '?' for o in t.optional))})" for n, t in SPACE_TYPES.items())
            + "."
        )
    spec = SPACE_TYPES[kind]
    allowed = ("type", *spec.required, *spec.optional)
    for key in entry:
        if key not in allowed:
            raise LibTrafficError(
                f"{where} ({kind}) has unknown key '{key}'.{did_you_mean(key, allowed)} "
                f"{kind} takes {', '.join(allowed[1:])}: {spec.doc}."
            )
    for key in spec.required:
        if key not in entry:
            raise LibTrafficError(f"{where} ({kind}) is missing '{key}'; {kind} takes {', '.join(allowed[1:])}: {spec.doc}.")
    if kind in ("choice", "grid_search"):
        values = entry["list"]
        if not isinstance(values, list) or not values:
            raise LibTrafficError(f"{where} ({kind}): 'list' must be a non-empty JSON list, got {values!r}.")
        for value in values:
            coerce_value(param, value, config.default_of(param), where)
        return entry
    for key in (*spec.required, *spec.optional):
        if key in entry:
            _number(path, param, entry, key)
    if kind == "randn":
        if entry["sd"] <= 0:
            raise LibTrafficError(f"{where} (randn): 'sd' must be > 0, got {entry['sd']}.")
    else:
        lower, upper = entry.get("lower", 0), entry["upper"]
        if lower >= upper:
            implicit = "" if "lower" in entry else " (lower defaults to 0)"
            raise LibTrafficError(f"{where} ({kind}): 'lower' ({lower}){implicit} must be smaller than 'upper' ({upper}).")
        if kind.startswith("log") and lower <= 0:
            raise LibTrafficError(f"{where} ({kind}): 'lower' must be > 0 for a log scale, got {lower}.")
        if "q" in entry and entry["q"] <= 0:
            raise LibTrafficError(f"{where} ({kind}): 'q' must be > 0, got {entry['q']}.")
        if kind == "quniform" and not (_multiple(lower, entry["q"]) and _multiple(upper, entry["q"])):
            raise LibTrafficError(f"{where} (quniform): 'lower' and 'upper' must be multiples of q ({entry['q']}).")
        if kind == "qrandint" and math.floor(upper / entry["q"]) * entry["q"] < lower:
            raise LibTrafficError(f"{where} (qrandint): no multiple of q ({entry['q']}) lies in [{lower}, {upper}].")
        if not spec.continuous:
            for key in ("lower", "upper", "q"):
                if key in entry and float(entry[key]) != int(entry[key]):
                    raise LibTrafficError(f"{where} ({kind}): '{key}' must be an integer, got {entry[key]}.")
        for key in ("lower", "upper"):
            if key in entry:
                coerce_value(param, entry[key], config.default_of(param), where)
    default = config.default_of(param)
    if spec.continuous and isinstance(default, int) and not isinstance(default, bool):
        raise LibTrafficError(
            f"{where}: '{param}' is an integer key but {kind} draws fractional numbers; "
            "use randint, qrandint, lograndint or choice."
        )
    if isinstance(default, (bool, str, list)):
        raise LibTrafficError(f"{where}: '{param}' takes {type(default).__name__} values; use choice or grid_search.")
    return entry


def load_search_space(name: str, config: ConfigParser, search_alg: str) -> SearchSpace:
    """Read, validate and convert a space file for ``search_alg``; raises LibTrafficError."""
    path = find_space_file(name)
    raw = load_json(path, "space file")
    if not isinstance(raw, dict) or not raw:
        raise LibTrafficError(f"{path} must be a non-empty JSON object mapping parameter names to entries.")
    known = config.known_keys()
    for param in raw:
        if param not in known:
            raise LibTrafficError(
                f"{path}: parameter '{param}' is not a config key of {config['model']} / {config['dataset']}, so tuning it "
                f"would change nothing.{did_you_mean(param, known)} Known keys are listed in libtraffic/config/."
            )
    entries = {param: _check_entry(path, param, entry, config) for param, entry in raw.items()}
    if search_alg in SEARCHER_LIMITS:
        allowed, reason = SEARCHER_LIMITS[search_alg]
        bad = {p: e["type"] for p, e in entries.items() if e["type"] not in allowed}
        if bad:
            listed = ", ".join(f"'{p}' ({t})" for p, t in bad.items())
            raise LibTrafficError(
                f"{path}: --search_alg {search_alg} cannot handle {listed}: {reason}. "
                f"It accepts {', '.join(sorted(allowed))}. Use --search_alg "
                f"{_alternatives(search_alg, set(bad.values()))}, or change those entries."
            )
    param_space = {p: SPACE_TYPES[e["type"]].build(e) for p, e in entries.items()}
    return SearchSpace(path, entries, param_space)
