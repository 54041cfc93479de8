"""Search-space files: LibCity's JSON format -> validated entries, Ray Tune samplers and Optuna suggestions.

    {"learning_rate": {"type": "choice", "list": [0.01, 0.005, 0.001]},
     "max_epoch":     {"type": "randint", "lower": 2, "upper": 10},
     "dropout":       {"type": "uniform", "lower": 0.1, "upper": 0.6}}

Each entry type is one row of SPACE_TYPES: its keys, its own checks, its Ray Tune sampler, its
Optuna suggestion (for --search_alg OptunaSearch, whose define-by-run space takes every type),
its extreme values (for --dry_run) and its largest value. Every failure names the file and the
entry, says what is wrong and what to write instead.

Optuna: ranges become float/int suggestions over the same values Ray would draw (log scale, step
q; randint's upper end excluded, qrandint's included); choice and grid lists are categories (their
positions when the values are not plain scalars or two compare equal, e.g. lists, or 1 and 1.0);
randn is a uniform u in (0, 1) that TPE models, handed to the trial as mean + sd * Phi^-1(u), so
its prior is exactly N(mean, sd); grid values are fixed per trial by enqueued trials (grid_points).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from ray import tune

from libtraffic.config.config_parser import ConfigParser, coerce_value
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.jsonio import find_json_file, load_json
from libtraffic.utils.registry import did_you_mean
from libtraffic.utils.values import plain

# randn's uniform stays this far from 0 and 1, so Phi^-1(u) is finite (|z| <= 8.3 sd).
_RANDN_EPS = 1e-16
_NORMAL = NormalDist()


def _plain_choices(values: list) -> bool:
    """Optuna categories must be scalars; equal values (1, 1.0, True) would share one category."""
    if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        return False
    return not any(a == b for i, a in enumerate(values) for b in values[i + 1:])


def _categories(values: list) -> list:
    return list(values) if _plain_choices(values) else list(range(len(values)))


def _below(upper: float) -> float:
    return math.nextafter(upper, -math.inf)


# ----- checks of one entry, by kind (``where`` names the file and entry) -----

def _check_list(where: str, kind: str, param: str, entry: dict, config: ConfigParser) -> None:
    values = entry["list"]
    if not isinstance(values, list) or not values:
        raise LibTrafficError(f"{where} ({kind}): 'list' must be a non-empty JSON list, got {values!r}.")
    for value in values:
        coerce_value(param, value, config.default_of(param), where)


def _check_randn(where: str, kind: str, param: str, entry: dict, config: ConfigParser) -> None:
    if entry["sd"] <= 0:
        raise LibTrafficError(f"{where} (randn): 'sd' must be > 0, got {entry['sd']}.")


def _multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q), abs_tol=1e-9)


def _check_range(where: str, kind: str, param: str, entry: dict, config: ConfigParser) -> None:
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
    if not SPACE_TYPES[kind].continuous:
        for key in ("lower", "upper", "q"):
            if key in entry and float(entry[key]) != int(entry[key]):
                raise LibTrafficError(f"{where} ({kind}): '{key}' must be an integer, got {entry[key]}.")
    for key in ("lower", "upper"):
        if key in entry:
            coerce_value(param, entry[key], config.default_of(param), where)


# ----- the integer values a range type draws: (smallest, largest) -----

def _int_span(entry: dict) -> tuple[int, int]:
    return int(entry.get("lower", 0)), int(entry["upper"]) - 1


def _q_span(entry: dict) -> tuple[int, int]:
    q = entry["q"]
    return int(math.ceil(entry["lower"] / q) * q), int(math.floor(entry["upper"] / q) * q)


# ----- Optuna suggestions: the value the trial gets -----

def _suggest_categorical(trial, key: str, entry: dict) -> Any:
    values = entry["list"]
    chosen = trial.suggest_categorical(key, _categories(values))
    return chosen if _plain_choices(values) else values[chosen]


def _suggest_randn(trial, key: str, entry: dict) -> float:
    u = trial.suggest_float(key, _RANDN_EPS, 1 - _RANDN_EPS)
    return entry["mean"] + entry["sd"] * _NORMAL.inv_cdf(u)


@dataclass(frozen=True)
class SpaceType:
    """One entry type of a space file, with everything that depends on it."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    doc: str
    continuous: bool  # draws non-integral floats
    check: Callable[[str, str, str, dict, ConfigParser], None]  # (where, type, key, entry, config) -> raises
    ray: Callable[[dict], Any]  # the Ray Tune sampler (or grid)
    optuna: Callable[[Any, str, dict], Any]  # (Optuna trial, key, entry) -> the value for the trial's config
    corners: Callable[[dict], list[tuple[Any, str]]]  # extreme values, each with a note
    largest: Callable[[dict], float]  # the largest value it can give
    grid: bool = False  # every listed value runs (grid_search)


def _list_type(doc: str, ray: Callable[[dict], Any], grid: bool = False) -> SpaceType:
    kind = "grid_search" if grid else "choice"
    return SpaceType(("list",), (), doc, False, _check_list, ray, _suggest_categorical,
                     lambda e: [(value, kind) for value in e["list"]], lambda e: max(e["list"]), grid)


SPACE_TYPES: dict[str, SpaceType] = {
    "uniform": SpaceType(
        ("lower", "upper"), (), "float uniformly in [lower, upper)", True, _check_range,
        lambda e: tune.uniform(e["lower"], e["upper"]),
        lambda t, k, e: t.suggest_float(k, e["lower"], _below(e["upper"])),
        lambda e: [(e["lower"], "uniform lower end"), (_below(e["upper"]), f"uniform just below upper {e['upper']}")],
        lambda e: e["upper"]),
    "loguniform": SpaceType(
        ("lower", "upper"), (), "float log-uniformly in [lower, upper), 0 < lower", True, _check_range,
        lambda e: tune.loguniform(e["lower"], e["upper"]),
        lambda t, k, e: t.suggest_float(k, e["lower"], _below(e["upper"]), log=True),
        lambda e: [(e["lower"], "loguniform lower end"),
                   (_below(e["upper"]), f"loguniform just below upper {e['upper']}")],
        lambda e: e["upper"]),
    "quniform": SpaceType(
        ("lower", "upper", "q"), (), "float uniformly in [lower, upper], rounded to a multiple of q", True,
        _check_range, lambda e: tune.quniform(e["lower"], e["upper"], e["q"]),
        lambda t, k, e: t.suggest_float(k, e["lower"], e["upper"], step=e["q"]),
        lambda e: [(e["lower"], "quniform lower end"), (e["upper"], "quniform upper end")],
        lambda e: e["upper"]),
    "randn": SpaceType(
        ("mean", "sd"), (), "float from a normal distribution (sd > 0)", True, _check_randn,
        lambda e: tune.randn(e["mean"], e["sd"]), _suggest_randn,
        lambda e: [(e["mean"] - 3 * e["sd"], "randn mean - 3 sd"), (e["mean"] + 3 * e["sd"], "randn mean + 3 sd")],
        lambda e: math.inf),
    "randint": SpaceType(
        ("upper",), ("lower",), "integer in [lower, upper), upper excluded; lower defaults to 0", False, _check_range,
        lambda e: tune.randint(e.get("lower", 0), e["upper"]),
        lambda t, k, e: t.suggest_int(k, *_int_span(e)),
        lambda e: [(_int_span(e)[0], "randint lower end"),
                   (_int_span(e)[1], f"randint largest value (upper {e['upper']} excluded)")],
        lambda e: _int_span(e)[1]),
    # Ray's qrandint leaves out `upper` when q is 1; randint(lower, upper + 1) keeps it in.
    "qrandint": SpaceType(
        ("lower", "upper", "q"), (), "integer in [lower, upper], upper included, a multiple of q", False, _check_range,
        lambda e: tune.qrandint(e["lower"], e["upper"], e["q"]) if e["q"] != 1 else tune.randint(e["lower"], e["upper"] + 1),
        lambda t, k, e: t.suggest_int(k, *_q_span(e), step=int(e["q"])),
        lambda e: [(_q_span(e)[0], "qrandint smallest value"), (_q_span(e)[1], "qrandint largest value")],
        lambda e: e["upper"]),
    "lograndint": SpaceType(
        ("lower", "upper"), (), "integer log-uniformly in [lower, upper), 0 < lower", False, _check_range,
        lambda e: tune.lograndint(e["lower"], e["upper"]),
        lambda t, k, e: t.suggest_int(k, *_int_span(e), log=True),
        lambda e: [(_int_span(e)[0], "lograndint lower end"),
                   (_int_span(e)[1], f"lograndint largest value (upper {e['upper']} excluded)")],
        lambda e: _int_span(e)[1]),
    "choice": _list_type("one of the values in list", lambda e: tune.choice(e["list"])),
    "grid_search": _list_type("every value in list (each combination is one trial per sample)",
                              lambda e: tune.grid_search(e["list"]), grid=True),
}

# What each searcher can take (the others take every type); the reason is shown to the user.
SEARCHER_TYPES: dict[str, tuple[set[str], str]] = {
    "BayesOptSearch": ({"uniform"}, "BayesOptSearch models only continuous uniform ranges (Ray would silently "
                       "drop log scales and quantization, and cannot use integers or lists)"),
    "HyperOpt": (set(SPACE_TYPES) - {"grid_search"}, "HyperOpt samples adaptively and cannot enumerate a grid"),
}
# Searchers offered as alternatives in those messages, in this order.
_ALTERNATIVES = ("BasicSearch", "HyperOpt", "OptunaSearch", "BayesOptSearch")


def _alternatives(search_alg: str, kinds: set[str]) -> str:
    """'BasicSearch, HyperOpt or OptunaSearch': the other searchers that take every type in ``kinds``."""
    names = [n for n in _ALTERNATIVES if n != search_alg and kinds <= SEARCHER_TYPES.get(n, (set(SPACE_TYPES), ""))[0]]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


@dataclass
class SearchSpace:
    """A validated space: the entries as written, and their Ray Tune samplers."""

    path: Path
    entries: dict[str, dict]
    param_space: dict[str, Any]

    def without(self, keys: set[str]) -> "SearchSpace":
        """This space without the entries ``keys`` (--dry_run goes on with the entries it can build)."""
        return SearchSpace(self.path, {k: e for k, e in self.entries.items() if k not in keys},
                           {k: d for k, d in self.param_space.items() if k not in keys})

    def row(self, key: str) -> SpaceType:
        return SPACE_TYPES[self.entries[key]["type"]]

    def grid_keys(self) -> list[str]:
        return [k for k in self.entries if self.row(k).grid]

    def grid_size(self) -> int:
        return math.prod(len(self.entries[k]["list"]) for k in self.grid_keys())

    def upper_bound(self, key: str) -> float | None:
        """Largest value ``key`` can take, or None when the space does not name it."""
        return self.row(key).largest(self.entries[key]) if key in self.entries else None

    def corners(self, key: str) -> list[tuple[Any, str]]:
        """The extreme values entry ``key`` can give, each with a note for messages: every listed
        value, the ends of a range (the largest value below an excluded upper end), mean -/+ 3 sd."""
        return self.row(key).corners(self.entries[key])

    def sample(self, rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
        """``count`` configurations drawn without Ray's searchers (for --dry_run); grids enumerate first."""
        grid_keys = self.grid_keys()
        combos = list(itertools.product(*(self.entries[k]["list"] for k in grid_keys))) or [()]
        result = []
        for i in range(count):
            values = dict(zip(grid_keys, combos[i % len(combos)]))
            for key, domain in self.param_space.items():
                if key not in values:
                    values[key] = plain(domain.sample(random_state=rng))
            result.append(values)
        return result

    def optuna_space(self) -> "OptunaSpace":
        return OptunaSpace(self.entries)

    def grid_points(self, num_samples: int) -> list[dict[str, Any]]:
        """For OptunaSearch: the grid value of each trial, in run order (every combination, ``num_samples``
        times, in Ray's order as with BasicSearch), as Optuna categories."""
        keys = self.grid_keys()
        if not keys:
            return []
        combos = list(itertools.product(*(_categories(self.entries[k]["list"]) for k in keys)))
        return [dict(zip(keys, combo)) for _ in range(num_samples) for combo in combos]


class OptunaSpace:
    """The define-by-run function Ray's OptunaSearch calls once per trial: suggests every entry on the
    Optuna trial and returns the values the trial's config gets (decoded randn values and list items)."""

    def __init__(self, entries: dict[str, dict]) -> None:
        self.entries = {key: dict(entry) for key, entry in entries.items()}

    def __call__(self, trial) -> dict[str, Any]:
        return {key: SPACE_TYPES[entry["type"]].optuna(trial, key, entry) for key, entry in self.entries.items()}


#: LibCity's default --space_file; shipped beside hyper_tune.py, used when ./hyper_example.json is absent.
DEFAULT_SPACE = "hyper_example"


def find_space_file(name: str) -> Path:
    """--space_file NAME is ./NAME.json like LibCity; a path to a .json file works too."""
    shipped = paths.PACKAGE_DIR.parent / f"{DEFAULT_SPACE}.json"
    if name == DEFAULT_SPACE and not Path(f"{name}.json").is_file() and shipped.is_file():
        return shipped
    return find_json_file(name, "Space file", " See sample_space_file.json for the format.")


def _caught(check: Callable[..., Any], *args: Any) -> list[str]:
    """The message of the LibTrafficError ``check(*args)`` raises, as a list (empty when it passes)."""
    try:
        check(*args)
    except LibTrafficError as err:
        return [str(err)]
    return []


def _entry_problems(path: Path, param: str, entry: Any, config: ConfigParser) -> list[str]:
    """Every problem of one entry (each field's); a later check runs only when the ones it relies on passed."""
    where = f"{path}: entry '{param}'"
    if not isinstance(entry, dict):
        return [f'{where} must be an object like {{"type": "choice", "list": [...]}}, got {entry!r}.']
    if "type" not in entry:
        return [f"{where} has no 'type'. Valid types: {', '.join(SPACE_TYPES)}."]
    kind = entry["type"]
    if not isinstance(kind, str) or kind not in SPACE_TYPES:
        return [
            f"{where} has unknown type {kind!r}.{did_you_mean(str(kind), SPACE_TYPES)} Valid types: "
            + "; ".join(f"{n} ({', '.join(t.required + tuple(o + '?' for o in t.optional))})" for n, t in SPACE_TYPES.items())
            + "."
        ]
    spec = SPACE_TYPES[kind]
    allowed = ("type", *spec.required, *spec.optional)
    problems = [f"{where} ({kind}) has unknown key '{key}'.{did_you_mean(key, allowed)} "
                f"{kind} takes {', '.join(allowed[1:])}: {spec.doc}." for key in entry if key not in allowed]
    problems += [f"{where} ({kind}) is missing '{key}'; {kind} takes {', '.join(allowed[1:])}: {spec.doc}."
                 for key in spec.required if key not in entry]
    if problems:
        return problems
    if "list" not in spec.required:
        for key in (*spec.required, *spec.optional):
            value = entry.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{where}: '{key}' must be a finite number, got {value!r}.")
        if problems:
            return problems
    problems += _caught(spec.check, where, kind, param, entry, config)
    default = config.default_of(param)
    if "list" not in spec.required:
        if spec.continuous and isinstance(default, int) and not isinstance(default, bool):
            problems.append(f"{where}: '{param}' is an integer key but {kind} draws fractional numbers; "
                            "use randint, qrandint, lograndint or choice.")
        if isinstance(default, (bool, str, list)):
            problems.append(f"{where}: '{param}' takes {type(default).__name__} values; use choice or grid_search.")
    return problems


def _searcher_problems(path: Path, entries: dict[str, dict], search_alg: str) -> list[str]:
    """What ``search_alg`` cannot run: entry types it does not take, list values HyperOpt would alter."""
    problems = []
    if search_alg in SEARCHER_TYPES:
        allowed, reason = SEARCHER_TYPES[search_alg]
        bad = {p: e["type"] for p, e in entries.items() if e["type"] not in allowed}
        if bad:
            listed = ", ".join(f"'{p}' ({t})" for p, t in bad.items())
            problems.append(
                f"{path}: --search_alg {search_alg} cannot handle {listed}: {reason}. "
                f"It accepts {', '.join(sorted(allowed))}. Use --search_alg "
                f"{_alternatives(search_alg, set(bad.values()))}, or change those entries."
            )
    if search_alg == "HyperOpt":
        listed = [p for p, e in entries.items() if any(isinstance(v, (list, dict)) for v in e.get("list", []))]
        if listed:
            problems.append(
                f"{path}: --search_alg HyperOpt cannot handle list or object values ({', '.join(repr(p) for p in listed)}): "
                "it hands them to the trials changed (lists become tuples), so every such trial would fail. "
                "Use --search_alg BasicSearch or OptunaSearch for these entries."
            )
    return problems


def read_search_space(name: str, config: ConfigParser, search_alg: str) -> tuple[SearchSpace, list[str]]:
    """Read a space file and check every entry and field: the space of the valid entries, and every problem
    found (for --dry_run, which lists them all). A file that cannot be read or is not an object raises."""
    path = find_space_file(name)
    raw = load_json(path, "space file")  # also refuses a file nested too deeply for Python's parser
    if not isinstance(raw, dict) or not raw:
        raise LibTrafficError(f"{path} must be a non-empty JSON object mapping parameter names to entries.")
    known = config.known_keys()
    problems, entries = [], {}
    for param, entry in raw.items():
        if param not in known:
            problems.append(
                f"{path}: parameter '{param}' is not a config key of {config['model']} / {config['dataset']}, so tuning it "
                f"would change nothing.{did_you_mean(param, known)} Known keys are listed in libtraffic/config/."
            )
            continue
        found = _entry_problems(path, param, entry, config)
        problems += found
        if not found:
            entries[param] = entry
    problems += _searcher_problems(path, entries, search_alg)
    return SearchSpace(path, entries, {p: SPACE_TYPES[e["type"]].ray(e) for p, e in entries.items()}), problems


def load_search_space(name: str, config: ConfigParser, search_alg: str) -> SearchSpace:
    """Read, validate and convert a space file for ``search_alg``; raises LibTrafficError naming every problem."""
    space, problems = read_search_space(name, config, search_alg)
    if len(problems) == 1:
        raise LibTrafficError(problems[0])
    if problems:
        raise LibTrafficError(f"{len(problems)} problems in the space file:\n" + "\n".join(f"  - {p}" for p in problems))
    return space
