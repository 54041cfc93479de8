"""Search-space files: every entry type -> the right Ray domain; every user mistake -> a clear message.

No Ray cluster is started: load_search_space only builds ray.tune sample objects.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.tune.search import sample as ray_sample

from libtraffic.config import ConfigParser
from libtraffic.data.synthetic import write_synthetic_dataset
from libtraffic.tune.spaces import SPACE_TYPES, SearchSpace, load_search_space
from libtraffic.utils.errors import LibTrafficError

REPO_ROOT = Path(__file__).resolve().parent.parent
N_DRAWS = 2000
TUTORIAL = {
    "learning_rate": {"type": "choice", "list": [0.01, 0.005, 0.001]},
    "max_epoch": {"type": "randint", "lower": 2, "upper": 10},
    "hidden_size": {"type": "choice", "list": [50, 100, 200, 500]},
    "dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6},
}


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-node, 2-day synthetic dataset TINY, written once for the module (read-only)."""
    folder = tmp_path_factory.mktemp("search_space") / "raw_data"
    write_synthetic_dataset(folder, "TINY", num_nodes=4, num_days=2, seed=0)
    return folder


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw_data: Path) -> ConfigParser:
    """GRU on TINY, with tmp_path (holding ./raw_data) as the working directory."""
    monkeypatch.delenv("LIBTRAFFIC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw_data").symlink_to(raw_data, target_is_directory=True)
    return ConfigParser("traffic_state_pred", "GRU", "TINY")


def write_space(content: Any, name: str = "space") -> Path:
    """Write ``content`` (a dict, or raw text) as ./<name>.json; returns its absolute path."""
    path = Path(f"{name}.json").resolve()
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2), encoding="utf-8")
    return path


def load(config: ConfigParser, content: Any, search_alg: str = "BasicSearch") -> SearchSpace:
    write_space(content)
    return load_search_space("space", config, search_alg)


def draws(space: SearchSpace, key: str, seed: int = 0, size: int = N_DRAWS) -> np.ndarray:
    values = space.param_space[key].sample(random_state=np.random.default_rng(seed), size=size)
    return np.asarray(values)


def load_error(config: ConfigParser, content: Any, *patterns: str, search_alg: str = "BasicSearch") -> str:
    """Load a bad space; check the message names the file and matches every regex in ``patterns``."""
    path = write_space(content)
    with pytest.raises(LibTrafficError, match=patterns[0]) as info:
        load_search_space("space", config, search_alg)
    message = str(info.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    for pattern in patterns[1:]:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    return message


# ----------------------------------------------------------------------------- every type


def test_uniform_is_a_float_domain_inside_its_bounds(config: ConfigParser) -> None:
    space = load(config, {"dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6}})
    domain = space.param_space["dropout"]
    assert isinstance(domain, ray_sample.Float)
    assert isinstance(domain.get_sampler(), ray_sample.Float._Uniform)
    values = draws(space, "dropout")
    assert values.min() >= 0.1 and values.max() < 0.6
    # Spread over the whole range, not stuck at one end.
    assert values.min() < 0.15 and values.max() > 0.55
    assert abs(values.mean() - 0.35) < 0.02


def test_loguniform_draws_log_uniformly_inside_its_bounds(config: ConfigParser) -> None:
    entry = {"type": "loguniform", "lower": 1e-4, "upper": 1e-2}
    space = load(config, {"learning_rate": entry})
    domain = space.param_space["learning_rate"]
    assert isinstance(domain, ray_sample.Float)
    assert isinstance(domain.get_sampler(), ray_sample.Float._LogUniform)
    values = draws(space, "learning_rate")
    assert values.min() >= 1e-4 and values.max() < 1e-2
    # Half the draws lie below the geometric mean 1e-3 (a plain uniform would put ~9% there).
    assert 0.45 < np.mean(values < 1e-3) < 0.55


def test_quniform_draws_multiples_of_q_with_upper_included(config: ConfigParser) -> None:
    space = load(config, {"dropout": {"type": "quniform", "lower": 0.1, "upper": 0.5, "q": 0.1}})
    assert isinstance(space.param_space["dropout"].get_sampler(), ray_sample.Quantized)
    values = draws(space, "dropout")
    np.testing.assert_allclose(values / 0.1, np.round(values / 0.1), atol=1e-9)
    assert sorted(set(np.round(values, 9))) == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_randn_draws_with_the_given_mean_and_sd(config: ConfigParser) -> None:
    space = load(config, {"dropout": {"type": "randn", "mean": 0.3, "sd": 0.05}})
    assert isinstance(space.param_space["dropout"].get_sampler(), ray_sample.Float._Normal)
    values = draws(space, "dropout", size=5000)
    assert abs(values.mean() - 0.3) < 0.005
    assert abs(values.std() - 0.05) < 0.005


def test_randint_excludes_upper(config: ConfigParser) -> None:
    space = load(config, {"max_epoch": {"type": "randint", "lower": 2, "upper": 5}})
    assert isinstance(space.param_space["max_epoch"], ray_sample.Integer)
    assert sorted(set(draws(space, "max_epoch").tolist())) == [2, 3, 4]


def test_randint_lower_defaults_to_zero(config: ConfigParser) -> None:
    space = load(config, {"num_layers": {"type": "randint", "upper": 3}})
    assert sorted(set(draws(space, "num_layers").tolist())) == [0, 1, 2]
    assert space.upper_bound("num_layers") == 2


def test_qrandint_includes_upper_and_draws_multiples_of_q(config: ConfigParser) -> None:
    space = load(config, {"batch_size": {"type": "qrandint", "lower": 16, "upper": 64, "q": 16}})
    assert isinstance(space.param_space["batch_size"], ray_sample.Integer)
    assert sorted(set(draws(space, "batch_size").tolist())) == [16, 32, 48, 64]
    assert space.upper_bound("batch_size") == 64


def test_qrandint_with_q_one_includes_upper_as_documented(config: ConfigParser) -> None:
    space = load(config, {"max_epoch": {"type": "qrandint", "lower": 2, "upper": 4, "q": 1}})
    assert sorted(set(draws(space, "max_epoch").tolist())) == [2, 3, 4]


def test_lograndint_excludes_upper_and_favours_small_values(config: ConfigParser) -> None:
    space = load(config, {"hidden_size": {"type": "lograndint", "lower": 1, "upper": 64}})
    domain = space.param_space["hidden_size"]
    assert isinstance(domain, ray_sample.Integer)
    assert isinstance(domain.get_sampler(), ray_sample.Integer._LogUniform)
    values = draws(space, "hidden_size")
    assert values.min() >= 1 and values.max() <= 63
    assert np.mean(values < 8) > 0.4  # log scale: half the mass below sqrt(64); uniform would give ~11%
    assert space.upper_bound("hidden_size") == 63


def test_choice_draws_only_listed_values(config: ConfigParser) -> None:
    space = load(config, {"hidden_size": {"type": "choice", "list": [50, 100, 200, 500]}})
    domain = space.param_space["hidden_size"]
    assert isinstance(domain, ray_sample.Categorical)
    assert domain.categories == [50, 100, 200, 500]
    assert sorted(set(draws(space, "hidden_size").tolist())) == [50, 100, 200, 500]


def test_grid_search_becomes_a_ray_grid(config: ConfigParser) -> None:
    space = load(config, {"num_layers": {"type": "grid_search", "list": [1, 2, 3]}})
    assert space.param_space["num_layers"] == {"grid_search": [1, 2, 3]}
    assert space.grid_size() == 3


def test_space_types_table_lists_all_nine_types() -> None:
    assert set(SPACE_TYPES) == {"uniform", "loguniform", "quniform", "randn", "randint", "qrandint",
                                "lograndint", "choice", "grid_search"}


# ----------------------------------------------------------------------------- SearchSpace helpers


def test_grid_size_is_the_product_of_grid_lengths(config: ConfigParser) -> None:
    space = load(config, {
        "num_layers": {"type": "grid_search", "list": [1, 2]},
        "patience": {"type": "grid_search", "list": [3, 4, 5]},
        "hidden_size": {"type": "choice", "list": [8, 16]},
    })
    assert space.grid_size() == 6
    assert load(config, {"hidden_size": {"type": "choice", "list": [8, 16]}}).grid_size() == 1


@pytest.mark.parametrize(("entry", "expected"), [
    ({"type": "randint", "lower": 2, "upper": 10}, 9),
    ({"type": "choice", "list": [3, 12, 7]}, 12),
    ({"type": "grid_search", "list": [4, 2]}, 4),
    ({"type": "qrandint", "lower": 2, "upper": 8, "q": 2}, 8),
])
def test_upper_bound_of_max_epoch(config: ConfigParser, entry: dict, expected: int) -> None:
    space = load(config, {"max_epoch": entry})
    assert space.upper_bound("max_epoch") == expected
    assert max(s["max_epoch"] for s in space.sample(np.random.default_rng(0), 300)) == expected


def test_upper_bound_of_floats_and_absent_keys(config: ConfigParser) -> None:
    space = load(config, {
        "dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6},
        "weight_decay": {"type": "randn", "mean": 0.0, "sd": 1.0},
    })
    assert space.upper_bound("dropout") == 0.6
    assert space.upper_bound("weight_decay") == float("inf")
    assert space.upper_bound("max_epoch") is None


def test_uniform_on_max_epoch_is_refused_so_upper_bound_stays_integral(config: ConfigParser) -> None:
    load_error(config, {"max_epoch": {"type": "uniform", "lower": 2, "upper": 10}},
               r"entry 'max_epoch': 'max_epoch' is an integer key but uniform draws fractional numbers",
               r"use randint, qrandint, lograndint or choice")


def test_sample_enumerates_grid_combinations_first(config: ConfigParser) -> None:
    space = load(config, {
        "num_layers": {"type": "grid_search", "list": [1, 2]},
        "patience": {"type": "grid_search", "list": [3, 4, 5]},
        "dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6},
    })
    samples = space.sample(np.random.default_rng(0), 12)
    combos = [(s["num_layers"], s["patience"]) for s in samples]
    assert sorted(combos[:6]) == sorted((a, b) for a in (1, 2) for b in (3, 4, 5))
    assert combos[6:] == combos[:6]  # the second round repeats the grid with fresh random values
    dropouts = [s["dropout"] for s in samples]
    assert all(0.1 <= d < 0.6 for d in dropouts) and len(set(dropouts)) == 12


def test_sample_is_deterministic_for_a_seed_and_returns_plain_python(config: ConfigParser) -> None:
    space = load(config, TUTORIAL)
    first = space.sample(np.random.default_rng(7), 5)
    assert first == space.sample(np.random.default_rng(7), 5)
    assert first != space.sample(np.random.default_rng(8), 5)
    for sampled in first:
        assert set(sampled) == set(TUTORIAL)
        assert type(sampled["max_epoch"]) is int and 2 <= sampled["max_epoch"] < 10
        assert type(sampled["dropout"]) is float
        assert sampled["hidden_size"] in (50, 100, 200, 500)
        json.dumps(sampled)  # printable and writable as a config file


# ----------------------------------------------------------------------------- the shipped sample file


@pytest.mark.parametrize("how", ["name", "name.json", "absolute path"])
def test_sample_space_file_loads(config: ConfigParser, tmp_path: Path, how: str) -> None:
    shutil.copy(REPO_ROOT / "sample_space_file.json", tmp_path / "sample_space_file.json")
    name = {"name": "sample_space_file", "name.json": "sample_space_file.json",
            "absolute path": str(tmp_path / "sample_space_file.json")}[how]
    space = load_search_space(name, config, "BasicSearch")
    assert space.path == (tmp_path / "sample_space_file.json").resolve()
    assert space.entries == TUTORIAL
    assert space.param_space["learning_rate"].categories == [0.01, 0.005, 0.001]
    assert space.param_space["hidden_size"].categories == [50, 100, 200, 500]
    assert isinstance(space.param_space["max_epoch"], ray_sample.Integer)
    assert isinstance(space.param_space["dropout"].get_sampler(), ray_sample.Float._Uniform)
    assert space.upper_bound("max_epoch") == 9


def test_sample_space_file_in_a_subfolder_loads_by_relative_path(config: ConfigParser, tmp_path: Path) -> None:
    (tmp_path / "spaces").mkdir()
    shutil.copy(REPO_ROOT / "sample_space_file.json", tmp_path / "spaces" / "gru.json")
    assert set(load_search_space("spaces/gru", config, "HyperOpt").entries) == set(TUTORIAL)


def test_sample_space_file_is_accepted_by_hyperopt_but_not_bayesopt(config: ConfigParser) -> None:
    assert set(load(config, TUTORIAL, "HyperOpt").param_space) == set(TUTORIAL)
    load_error(config, TUTORIAL, r"--search_alg BayesOptSearch cannot handle", search_alg="BayesOptSearch")


def test_every_type_in_one_space_is_accepted_by_basic_search(config: ConfigParser) -> None:
    space = load(config, {
        "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.5},
        "learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-1},
        "weight_decay": {"type": "quniform", "lower": 0.0, "upper": 0.01, "q": 0.001},
        "lr_decay_ratio": {"type": "randn", "mean": 0.1, "sd": 0.01},
        "max_epoch": {"type": "randint", "lower": 1, "upper": 4},
        "batch_size": {"type": "qrandint", "lower": 8, "upper": 32, "q": 8},
        "hidden_size": {"type": "lograndint", "lower": 4, "upper": 128},
        "rnn_type": {"type": "choice", "list": ["GRU", "LSTM"]},
        "num_layers": {"type": "grid_search", "list": [1, 2]},
    })
    assert {e["type"] for e in space.entries.values()} == set(SPACE_TYPES)
    for sampled in space.sample(np.random.default_rng(0), 4):
        assert set(sampled) == set(space.entries)
        assert sampled["rnn_type"] in ("GRU", "LSTM") and sampled["num_layers"] in (1, 2)


def test_hyperopt_accepts_every_type_but_grid_search(config: ConfigParser) -> None:
    space = load(config, {
        "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.5},
        "learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-1},
        "weight_decay": {"type": "quniform", "lower": 0.0, "upper": 0.01, "q": 0.001},
        "lr_decay_ratio": {"type": "randn", "mean": 0.1, "sd": 0.01},
        "max_epoch": {"type": "randint", "upper": 4},
        "batch_size": {"type": "qrandint", "lower": 8, "upper": 32, "q": 8},
        "hidden_size": {"type": "lograndint", "lower": 4, "upper": 128},
        "rnn_type": {"type": "choice", "list": ["GRU", "LSTM"]},
    }, "HyperOpt")
    assert len(space.param_space) == 8


def test_bayesopt_accepts_uniform(config: ConfigParser) -> None:
    space = load(config, {"dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6},
                          "learning_rate": {"type": "uniform", "lower": 0.001, "upper": 0.01}}, "BayesOptSearch")
    assert set(space.param_space) == {"dropout", "learning_rate"}


def test_integral_float_bounds_are_accepted_for_integer_keys(config: ConfigParser) -> None:
    space = load(config, {"max_epoch": {"type": "randint", "lower": 2.0, "upper": 4.0}})
    assert sorted(set(draws(space, "max_epoch").tolist())) == [2, 3]


def test_loguniform_without_base_emits_no_deprecation_warning(config: ConfigParser) -> None:
    write_space({"learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-2}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_search_space("space", config, "BasicSearch")


# ----------------------------------------------------------------------------- file-level errors


def test_file_not_found_lists_where_it_looked(config: ConfigParser, tmp_path: Path) -> None:
    with pytest.raises(LibTrafficError, match=r"Space file 'nope' not found") as info:
        load_search_space("nope", config, "BasicSearch")
    message = str(info.value)
    assert str(tmp_path / "nope.json") in message and "without .json" in message
    assert "sample_space_file.json" in message


def test_file_not_found_with_json_suffix(config: ConfigParser, tmp_path: Path) -> None:
    with pytest.raises(LibTrafficError, match=r"Space file 'gone\.json' not found") as info:
        load_search_space("gone.json", config, "BasicSearch")
    assert str(tmp_path / "gone.json") in str(info.value)


def test_tutorial_missing_comma_gives_line_column_and_hint(config: ConfigParser) -> None:
    text = json.dumps(TUTORIAL, indent=2)
    lines = text.splitlines()
    # LibCity's tutorial forgets the comma after the max_epoch entry.
    closing = next(i for i, line in enumerate(lines) if line.startswith('  "hidden_size"')) - 1
    assert lines[closing] == "  },"
    lines[closing] = "  }"
    message = load_error(config, "\n".join(lines),
                         r"The space file .* is not valid JSON: Expecting ',' delimiter",
                         rf"at line {closing + 2}, column 3", r'"hidden_size": \{', r"\n\s+\^",
                         r"Hint: JSON needs a comma between entries")
    assert "Traceback" not in message


@pytest.mark.parametrize(("text", "line", "column"), [
    ("{'dropout': {'type': 'uniform'}}", 1, 2),                     # single quotes
    ('{\n  "dropout": {"type": "choice", "list": [1, 2,]}\n}', 2, 47),  # trailing comma
    ("", 1, 1),                                                      # empty file
])
def test_other_json_syntax_errors(config: ConfigParser, text: str, line: int, column: int) -> None:
    load_error(config, text, rf"not valid JSON: .* at line {line}, column {column}", r"Hint:")


@pytest.mark.parametrize("content", [[], ["dropout"], {}, 3, "null"])
def test_top_level_must_be_a_non_empty_object(config: ConfigParser, content: Any) -> None:
    load_error(config, json.dumps(content) if not isinstance(content, str) else content,
               r"must be a non-empty JSON object mapping parameter names to entries")


# ----------------------------------------------------------------------------- entry errors


@pytest.mark.parametrize("entry", [3, "uniform", [0.1, 0.5], None])
def test_entry_must_be_an_object(config: ConfigParser, entry: Any) -> None:
    load_error(config, {"dropout": entry}, r"entry 'dropout' must be an object like \{\"type\": \"choice\"",
               re.escape(f"got {entry!r}"))


def test_entry_without_type_lists_valid_types(config: ConfigParser) -> None:
    message = load_error(config, {"dropout": {"lower": 0.1, "upper": 0.6}}, r"entry 'dropout' has no 'type'",
                         r"Valid types: ")
    assert all(kind in message for kind in SPACE_TYPES)


@pytest.mark.parametrize(("kind", "suggestion"), [("unifrom", "uniform"), ("gridsearch", "grid_search"),
                                                  ("Choice", "choice"), ("randInt", "randint")])
def test_unknown_type_suggests_and_lists_valid_types(config: ConfigParser, kind: str, suggestion: str) -> None:
    message = load_error(config, {"dropout": {"type": kind, "lower": 0.1, "upper": 0.6}},
                         rf"entry 'dropout' has unknown type '{kind}'\. Did you mean '{suggestion}'\?")
    # Each valid type with the keys it takes (optional ones marked with ?).
    for expected in ("uniform (lower, upper)", "randint (upper, lower?)", "loguniform (lower, upper)",
                     "choice (list)", "grid_search (list)", "randn (mean, sd)", "quniform (lower, upper, q)",
                     "qrandint (lower, upper, q)", "lograndint (lower, upper)"):
        assert expected in message


def test_unknown_type_far_from_any_has_no_suggestion(config: ConfigParser) -> None:
    message = load_error(config, {"dropout": {"type": "bayesian"}}, r"unknown type 'bayesian'\. Valid types:")
    assert "Did you mean" not in message


def test_non_string_type(config: ConfigParser) -> None:
    load_error(config, {"dropout": {"type": 3}}, r"entry 'dropout' has unknown type 3\. Valid types:")


def test_list_as_type_is_a_user_error(config: ConfigParser) -> None:
    load_error(config, {"dropout": {"type": ["uniform"], "lower": 0.1, "upper": 0.6}},
               r"entry 'dropout' has unknown type")


@pytest.mark.parametrize(("entry", "missing", "takes"), [
    ({"type": "uniform", "lower": 0.1}, "upper", "uniform takes lower, upper: float uniformly in"),
    ({"type": "uniform", "upper": 0.5}, "lower", "uniform takes lower, upper"),
    ({"type": "randn", "mean": 0.3}, "sd", "randn takes mean, sd"),
    ({"type": "quniform", "lower": 0.1, "upper": 0.5}, "q", "quniform takes lower, upper, q"),
    ({"type": "choice"}, "list", "choice takes list"),
    ({"type": "grid_search"}, "list", "grid_search takes list"),
])
def test_missing_key_says_what_the_type_takes(config: ConfigParser, entry: dict, missing: str, takes: str) -> None:
    load_error(config, {"dropout": entry}, rf"entry 'dropout' \({entry['type']}\) is missing '{missing}'",
               re.escape(takes))


def test_randint_without_upper(config: ConfigParser) -> None:
    load_error(config, {"max_epoch": {"type": "randint", "lower": 2}}, r"entry 'max_epoch' \(randint\) is missing "
               r"'upper'; randint takes upper, lower: integer in \[lower, upper\), upper excluded; lower defaults to 0")


@pytest.mark.parametrize(("entry", "bad", "suggestion"), [
    ({"type": "uniform", "lowr": 0.1, "upper": 0.5}, "lowr", "lower"),
    ({"type": "uniform", "lower": 0.1, "uper": 0.5}, "uper", "upper"),
    ({"type": "randn", "mean": 0.3, "std": 0.1}, "std", "sd"),
    ({"type": "choice", "lst": [0.1]}, "lst", "list"),
    ({"type": "choice", "values": [0.1]}, "values", None),
])
def test_mistyped_key_suggests_the_right_one(config: ConfigParser, entry: dict, bad: str,
                                             suggestion: str | None) -> None:
    kind = entry["type"]
    message = load_error(config, {"dropout": entry}, rf"entry 'dropout' \({kind}\) has unknown key '{bad}'\.",
                         rf"{kind} takes ")
    if suggestion:
        assert f"Did you mean '{suggestion}'?" in message
    else:
        assert "Did you mean" not in message


def test_key_of_another_type_is_refused(config: ConfigParser) -> None:
    """'lower' exists for uniform, but a choice entry does not take it (LibCity would ignore it)."""
    load_error(config, {"dropout": {"type": "choice", "list": [0.1], "lower": 0.1}},
               r"entry 'dropout' \(choice\) has unknown key 'lower'", r"choice takes list")


@pytest.mark.parametrize(("entry", "key", "shown"), [
    ({"type": "uniform", "lower": "0.1", "upper": 0.5}, "lower", "'0.1'"),
    ({"type": "uniform", "lower": 0.1, "upper": None}, "upper", "None"),
    ({"type": "uniform", "lower": True, "upper": 0.5}, "lower", "True"),
    ({"type": "randn", "mean": [0.3], "sd": 0.1}, "mean", r"\[0\.3\]"),
    ({"type": "quniform", "lower": 0.1, "upper": 0.5, "q": "0.1"}, "q", "'0.1'"),
])
def test_non_numeric_bound(config: ConfigParser, entry: dict, key: str, shown: str) -> None:
    load_error(config, {"dropout": entry}, rf"entry 'dropout': '{key}' must be a finite number, got {shown}\.")


@pytest.mark.parametrize(("param", "entry"), [
    ("dropout", {"type": "uniform", "lower": 0.5, "upper": 0.5}),
    ("dropout", {"type": "uniform", "lower": 0.6, "upper": 0.1}),
    ("learning_rate", {"type": "loguniform", "lower": 0.1, "upper": 0.01}),
    ("dropout", {"type": "quniform", "lower": 0.5, "upper": 0.1, "q": 0.1}),
    ("max_epoch", {"type": "randint", "lower": 10, "upper": 2}),
    ("max_epoch", {"type": "randint", "upper": 0}),
    ("max_epoch", {"type": "qrandint", "lower": 10, "upper": 10, "q": 2}),
    ("hidden_size", {"type": "lograndint", "lower": 64, "upper": 8}),
])
def test_lower_must_be_below_upper(config: ConfigParser, param: str, entry: dict) -> None:
    load_error(config, {param: entry}, rf"entry '{param}' \({entry['type']}\): 'lower' \(\d+(\.\d+)?\)( \(lower defaults to 0\))? must be "
               r"smaller than 'upper' \(\d+(\.\d+)?\)")


@pytest.mark.parametrize("kind", ["choice", "grid_search"])
@pytest.mark.parametrize("values", [[], 0.3, "0.1, 0.2", {"a": 0.1}])
def test_list_must_be_a_non_empty_list(config: ConfigParser, kind: str, values: Any) -> None:
    load_error(config, {"dropout": {"type": kind, "list": values}},
               rf"entry 'dropout' \({kind}\): 'list' must be a non-empty JSON list, got {re.escape(repr(values))}\.")


@pytest.mark.parametrize("sd", [0, -0.1])
def test_randn_sd_must_be_positive(config: ConfigParser, sd: float) -> None:
    load_error(config, {"dropout": {"type": "randn", "mean": 0.3, "sd": sd}},
               rf"entry 'dropout' \(randn\): 'sd' must be > 0, got {sd}\.")


@pytest.mark.parametrize(("param", "entry"), [
    ("learning_rate", {"type": "loguniform", "lower": 0, "upper": 0.1}),
    ("learning_rate", {"type": "loguniform", "lower": -0.01, "upper": 0.1}),
    ("hidden_size", {"type": "lograndint", "lower": 0, "upper": 64}),
])
def test_log_scale_lower_must_be_positive(config: ConfigParser, param: str, entry: dict) -> None:
    load_error(config, {param: entry}, rf"entry '{param}' \({entry['type']}\): 'lower' must be > 0 for a log scale")


@pytest.mark.parametrize(("param", "entry"), [
    ("dropout", {"type": "quniform", "lower": 0.1, "upper": 0.5, "q": 0}),
    ("dropout", {"type": "quniform", "lower": 0.1, "upper": 0.5, "q": -0.1}),
    ("batch_size", {"type": "qrandint", "lower": 8, "upper": 64, "q": 0}),
])
def test_q_must_be_positive(config: ConfigParser, param: str, entry: dict) -> None:
    load_error(config, {param: entry}, rf"entry '{param}' \({entry['type']}\): 'q' must be > 0, got {entry['q']}\.")


@pytest.mark.parametrize(("kind", "key", "entry"), [
    ("randint", "lower", {"lower": 1.5, "upper": 5}),
    ("randint", "upper", {"lower": 1, "upper": 5.5}),
    ("qrandint", "q", {"lower": 2, "upper": 10, "q": 1.5}),
    ("lograndint", "upper", {"lower": 1, "upper": 6.4}),
])
def test_integer_types_need_integer_bounds(config: ConfigParser, kind: str, key: str, entry: dict) -> None:
    load_error(config, {"hidden_size": {"type": kind, **entry}},
               rf"entry 'hidden_size' \({kind}\): '{key}' must be an integer, got {entry[key]}\.")


@pytest.mark.parametrize("kind", ["uniform", "loguniform", "quniform", "randn"])
def test_fractional_type_on_an_integer_key(config: ConfigParser, kind: str) -> None:
    entry = {"mean": 64, "sd": 8} if kind == "randn" else {"lower": 16, "upper": 128}
    entry |= {"q": 16} if kind == "quniform" else {}
    load_error(config, {"hidden_size": {"type": kind, **entry}},
               rf"entry 'hidden_size': 'hidden_size' is an integer key but {kind} draws fractional numbers; "
               r"use randint, qrandint, lograndint or choice\.")


@pytest.mark.parametrize(("param", "kind"), [("rnn_type", "randint"), ("bidirectional", "randint"),
                                             ("steps", "randint")])
def test_numeric_type_on_a_string_bool_or_list_key(config: ConfigParser, param: str, kind: str) -> None:
    default = config.default_of(param)
    load_error(config, {param: {"type": kind, "lower": 0, "upper": 2}},
               rf"entry '{param}'", rf"expected .* like the default {re.escape(json.dumps(default))}"
               if not isinstance(default, list) else rf"'{param}' takes list values; use choice or grid_search")


@pytest.mark.parametrize(("param", "values", "shown", "expected"), [
    ("hidden_size", ["a"], "'a'", "an integer like the default 64"),
    ("hidden_size", [32, 1.5], "1.5", "an integer like the default 64"),
    ("hidden_size", [True], "True", "an integer like the default 64"),
    ("dropout", [0.1, "0.2"], "'0.2'", "a number like the default 0.0"),
    ("rnn_type", ["GRU", 3], "3", 'a string like the default "GRU"'),
    ("bidirectional", [True, 1], "1", "true or false like the default false"),
])
def test_choice_values_must_match_the_key_type(config: ConfigParser, param: str, values: list, shown: str,
                                               expected: str) -> None:
    load_error(config, {param: {"type": "choice", "list": values}},
               rf"Bad value {re.escape(shown)} for '{param}' \(.*: entry '{param}'\): expected {re.escape(expected)}\.")


def test_grid_values_must_match_the_key_type(config: ConfigParser) -> None:
    load_error(config, {"max_epoch": {"type": "grid_search", "list": [2, "3"]}},
               r"Bad value '3' for 'max_epoch' \(.*: entry 'max_epoch'\): expected an integer")


def test_choice_of_well_typed_values_on_string_and_bool_keys(config: ConfigParser) -> None:
    space = load(config, {"rnn_type": {"type": "choice", "list": ["GRU", "LSTM"]},
                          "bidirectional": {"type": "grid_search", "list": [False, True]}})
    assert space.grid_size() == 2


@pytest.mark.parametrize(("param", "suggestion"), [("hiden_size", "hidden_size"), ("learning_rat", "learning_rate"),
                                                   ("Dropout", "dropout"), ("max_epochs", "max_epoch")])
def test_unknown_parameter_suggests_a_config_key(config: ConfigParser, param: str, suggestion: str) -> None:
    message = load_error(config, {param: {"type": "choice", "list": [1]}},
                         rf"parameter '{param}' is not a config key of GRU / TINY, so tuning it would change nothing\.",
                         rf"Did you mean '{suggestion}'\?", r"Known keys are listed in libtraffic/config/")
    assert f"'{param}'" in message


def test_unknown_parameter_far_from_any_key(config: ConfigParser) -> None:
    message = load_error(config, {"momentum_of_the_moon": {"type": "choice", "list": [1]}},
                         r"parameter 'momentum_of_the_moon' is not a config key")
    assert "Did you mean" not in message


def test_the_first_bad_entry_is_named_even_after_good_ones(config: ConfigParser) -> None:
    load_error(config, {"dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6},
                        "max_epoch": {"type": "randint", "lower": 2, "upper": 10},
                        "hidden_size": {"type": "choice", "list": []}},
               r"entry 'hidden_size' \(choice\): 'list' must be a non-empty JSON list")


# ----------------------------------------------------------------------------- searcher limits


@pytest.mark.parametrize(("param", "entry"), [
    ("hidden_size", {"type": "choice", "list": [32, 64]}),
    ("max_epoch", {"type": "randint", "lower": 2, "upper": 10}),
    ("learning_rate", {"type": "loguniform", "lower": 1e-4, "upper": 1e-2}),
    ("dropout", {"type": "quniform", "lower": 0.1, "upper": 0.5, "q": 0.1}),
    ("dropout", {"type": "randn", "mean": 0.3, "sd": 0.1}),
])
def test_bayesopt_explains_what_it_cannot_handle(config: ConfigParser, param: str, entry: dict) -> None:
    space = {"weight_decay": {"type": "uniform", "lower": 0.0, "upper": 0.1}, param: entry}
    message = load_error(config, space, rf"--search_alg BayesOptSearch cannot handle '{param}' \({entry['type']}\): "
                         r"BayesOptSearch models only continuous uniform ranges",
                         r"It accepts uniform\.", r"Use --search_alg BasicSearch, HyperOpt or OptunaSearch, or change those entries\.",
                         search_alg="BayesOptSearch")
    assert "weight_decay" not in message  # only the offending entries are named


def test_bayesopt_with_grid_search_does_not_suggest_hyperopt(config: ConfigParser) -> None:
    message = load_error(config, {"num_layers": {"type": "grid_search", "list": [1, 2]}},
                         r"--search_alg BayesOptSearch cannot handle 'num_layers' \(grid_search\)",
                         r"Use --search_alg BasicSearch or OptunaSearch, or change those entries\.",
                         search_alg="BayesOptSearch")
    assert "HyperOpt" not in message


def test_bayesopt_names_every_offending_entry(config: ConfigParser) -> None:
    load_error(config, TUTORIAL, r"cannot handle 'learning_rate' \(choice\), 'max_epoch' \(randint\), "
               r"'hidden_size' \(choice\):", search_alg="BayesOptSearch")


def test_hyperopt_with_grid_search_is_explained(config: ConfigParser) -> None:
    load_error(config, {"dropout": {"type": "uniform", "lower": 0.1, "upper": 0.6},
                        "num_layers": {"type": "grid_search", "list": [1, 2]}},
               r"--search_alg HyperOpt cannot handle 'num_layers' \(grid_search\): "
               r"HyperOpt samples adaptively and cannot enumerate a grid",
               r"Use --search_alg BasicSearch or OptunaSearch, or change those entries\.", search_alg="HyperOpt")


def test_entry_errors_come_before_searcher_limits(config: ConfigParser) -> None:
    """A broken entry is reported as such, not as something BayesOptSearch cannot handle."""
    load_error(config, {"hidden_size": {"type": "choice", "list": []}}, r"'list' must be a non-empty JSON list",
               search_alg="BayesOptSearch")


# ----------------------------------------------------------------------------- non-finite and quantisation edge cases


@pytest.mark.parametrize("text", [
    '{"dropout": {"type": "uniform", "lower": NaN, "upper": 0.5}}',
    '{"dropout": {"type": "choice", "list": [0.1, NaN]}}',
])
def test_nan_is_refused(config: ConfigParser, text: str) -> None:
    """Python's json reads NaN; a NaN bound or value would silently yield NaN hyperparameters."""
    load_error(config, text, r"(Bad value nan for 'dropout' \(.*: entry 'dropout'\): expected a number"
                             r"|entry 'dropout': 'lower' must be a finite number, got nan)")


@pytest.mark.parametrize("text", [
    '{"dropout": {"type": "uniform", "lower": 0.1, "upper": Infinity}}',
    '{"max_epoch": {"type": "randint", "lower": 1, "upper": Infinity}}',
])
def test_infinite_bounds_are_user_errors(config: ConfigParser, text: str) -> None:
    load_error(config, text, r"entry '(dropout|max_epoch)'")


@pytest.mark.parametrize("text", [
    '{"dropout": {"type": "randn", "mean": NaN, "sd": 0.1}}',
    '{"dropout": {"type": "randn", "mean": 0.3, "sd": Infinity}}',
])
def test_non_finite_randn_parameters_are_user_errors(config: ConfigParser, text: str) -> None:
    load_error(config, text, r"entry 'dropout'")


def test_quniform_bounds_not_multiples_of_q_are_user_errors(config: ConfigParser) -> None:
    load_error(config, {"dropout": {"type": "quniform", "lower": 0.15, "upper": 0.5, "q": 0.1}},
               r"entry 'dropout' \(quniform\)", r"multiple")


def test_qrandint_without_any_multiple_of_q_is_refused(config: ConfigParser) -> None:
    load_error(config, {"max_epoch": {"type": "qrandint", "lower": 1, "upper": 10, "q": 20}},
               r"entry 'max_epoch' \(qrandint\)")


EVERY_TYPE = {
    "weight_decay": {"type": "uniform", "lower": 0.0, "upper": 0.1},
    "learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-2},
    "lr_decay_ratio": {"type": "quniform", "lower": 0.1, "upper": 0.5, "q": 0.1},
    "dropout": {"type": "randn", "mean": 0.3, "sd": 0.05},
    "hidden_size": {"type": "randint", "lower": 4, "upper": 7},
    "batch_size": {"type": "qrandint", "lower": 16, "upper": 64, "q": 16},
    "patience": {"type": "lograndint", "lower": 2, "upper": 9},
    "steps": {"type": "choice", "list": [[5, 20], [10, 30]]},
    "num_layers": {"type": "grid_search", "list": [1, 2]},
    "scaler": {"type": "grid_search", "list": ["standard", "minmax01"]},
}


def optuna_suggestions(space: SearchSpace, count: int, num_samples: int, searcher=None,
                       first: int = 0) -> tuple[list[dict], Any]:
    """``count`` configurations from the real OptunaSearch (TPE) for trials first, first + 1, ...,
    each told a loss that depends on it."""
    from libtraffic.tune.searchers import optuna_searcher

    searcher = searcher or optuna_searcher(space, "loss", "min", 3, num_samples)
    configs = []
    for i in range(first, first + count):
        trial_id = f"t{i}"
        config = searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"loss": abs(config["learning_rate"] - 3e-3) + config["weight_decay"]})
        configs.append(config)
    return configs, searcher


def test_optuna_draws_every_space_type_from_its_range(config: ConfigParser) -> None:
    space = load(config, EVERY_TYPE, "OptunaSearch")
    configs, _ = optuna_suggestions(space, 60, num_samples=15)
    column = {key: [c[key] for c in configs] for key in EVERY_TYPE}
    assert all(0.0 <= v < 0.1 for v in column["weight_decay"])
    assert all(1e-4 <= v < 1e-2 for v in column["learning_rate"])
    assert {round(v, 9) for v in column["lr_decay_ratio"]} <= {0.1, 0.2, 0.3, 0.4, 0.5}
    assert all(isinstance(v, float) for v in column["dropout"]) and 0.1 < min(column["dropout"]) < max(column["dropout"]) < 0.5
    assert set(column["hidden_size"]) <= {4, 5, 6} and all(type(v) is int for v in column["hidden_size"])
    assert set(column["batch_size"]) == {16, 32, 48, 64}  # upper included, multiples of q
    assert set(column["patience"]) <= set(range(2, 9)) and all(type(v) is int for v in column["patience"])
    assert {tuple(v) for v in column["steps"]} == {(5, 20), (10, 30)}  # list values come back as lists
    assert all(type(v) is list for v in column["steps"])
    combos = [(c["num_layers"], c["scaler"]) for c in configs]
    order = [(1, "standard"), (1, "minmax01"), (2, "standard"), (2, "minmax01")]
    assert combos == order * 15  # every grid combination --num_samples times, in Ray's grid order
    # TPE (after its 10 prior draws) moves towards the small weight decays that lower the loss
    assert np.median(column["weight_decay"][30:]) < 0.5 * np.median(column["weight_decay"][:10])


def test_optuna_randn_prior_is_the_normal_distribution(config: ConfigParser) -> None:
    """TPE's first trials sample its prior: for randn that is exactly N(mean, sd) (Kolmogorov-Smirnov)."""
    import optuna
    from scipy import stats

    
    space = (load(config, {"dropout": {"type": "randn", "mean": 0.3, "sd": 0.05}}, "OptunaSearch")).optuna_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(N_DRAWS):
        trial = study.ask()
        values.append(space(trial)["dropout"])
        study.tell(trial, 0.0)
    assert stats.kstest(values, stats.norm(0.3, 0.05).cdf).pvalue > 1e-3
    assert stats.kstest(values, stats.norm(0.3, 0.06).cdf).pvalue < 1e-3  # the test can tell a wrong sd apart


def test_optuna_search_state_restored_continues_the_grid(config: ConfigParser, tmp_path: Path) -> None:
    """--resume restores the pickled searcher: the grid order and the study continue where they stopped."""
    from libtraffic.tune.searchers import optuna_searcher

    space = load(config, EVERY_TYPE, "OptunaSearch")
    whole, _ = optuna_suggestions(space, 8, num_samples=2)
    first, searcher = optuna_suggestions(space, 3, num_samples=2)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = optuna_searcher(space, "loss", "min", 99, 2)  # another seed: the restored sampler must win
    restored.restore(str(tmp_path / "searcher.pkl"))
    rest, _ = optuna_suggestions(space, 5, num_samples=2, searcher=restored, first=3)
    assert first + rest == whole


# ----- the search spaces shipped per model (spaces/<MODEL>.json; GRU, LSTM and RNN share RNN.json) -----

SHIPPED = REPO_ROOT / "spaces"


def shipped_space(model: str) -> Path:
    return SHIPPED / f"{'RNN' if model in ('GRU', 'LSTM', 'RNN') else model}.json"


@pytest.mark.parametrize("search_alg", ["BasicSearch", "HyperOpt", "OptunaSearch"])
def test_every_model_ships_a_space_its_searchers_take(config: ConfigParser, search_alg: str) -> None:
    """Each registered model has spaces/<MODEL>.json naming only its config keys, valid for these searchers."""
    from libtraffic.model import MODELS

    for model in MODELS:
        model_config = ConfigParser("traffic_state_pred", model, "TINY")
        space = load_search_space(str(shipped_space(model)), model_config, search_alg)
        assert len(space.entries) >= 4 and "learning_rate" in space.entries, model
    assert {p.stem for p in SHIPPED.glob("*.json")} == {shipped_space(m).stem for m in MODELS}  # none left over
