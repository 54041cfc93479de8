"""ConfigParser: layer precedence, sources, type checks and the messages of user mistakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from libtraffic.config import ConfigParser
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError

from conftest import hand_values

TASK = "traffic_state_pred"


@pytest.fixture
def dataset(make_dataset) -> str:
    """A dataset whose config.json also sets keys that higher layers define."""
    make_dataset("PREC", hand_values(), info={
        "batch_size": 7, "scaler": "minmax01", "evaluator_mode": "average", "max_epoch": 3, "my_key": 5,
    })
    return "PREC"


def test_shipped_layers_override_dataset_config(dataset: str) -> None:
    config = ConfigParser(TASK, "GRU", dataset)
    assert config["batch_size"] == 64
    assert config.sources["batch_size"] == "data/TrafficStatePointDataset.json"
    assert config["scaler"] == "standard"  # RNN.json beats TrafficStatePointDataset.json's "none"
    assert config.sources["scaler"] == "model/traffic_state_pred/RNN.json"
    assert config["evaluator_mode"] == "single"
    assert config.sources["evaluator_mode"] == "evaluator/TrafficStateEvaluator.json"
    assert config["max_epoch"] == 100
    assert config.sources["max_epoch"] == "model/traffic_state_pred/RNN.json"
    assert config["my_key"] == 5
    assert config.sources["my_key"] == f"raw_data/{dataset}/config.json"
    assert config["set_weight_link_or_dist"] == "dist"  # info block, above dataset_info.json's "link"
    assert config.sources["set_weight_link_or_dist"] == f"raw_data/{dataset}/config.json"
    assert (config["task"], config["model"], config["dataset"], config["rnn_type"]) == (TASK, "GRU", dataset, "GRU")
    assert config["dataset_class"] == "TrafficStatePointDataset"


def test_config_file_then_command_line(dataset: str, workdir: Path) -> None:
    (workdir / "mine.json").write_text(json.dumps({"batch_size": 16, "hidden_size": 8, "my_key": 6}))
    config = ConfigParser(TASK, "GRU", dataset, config_file="mine")
    assert (config["batch_size"], config["hidden_size"], config["my_key"]) == (16, 8, 6)
    assert config.sources["batch_size"] == "config file mine.json"
    config = ConfigParser(TASK, "GRU", dataset, config_file="mine", other_args={"batch_size": 32, "my_key": "9"})
    assert (config["batch_size"], config["hidden_size"], config["my_key"]) == (32, 8, 9)
    assert config.sources["batch_size"] == "command line"
    assert config.sources["hidden_size"] == "config file mine.json"


def test_config_file_found_as_path(dataset: str, workdir: Path) -> None:
    (workdir / "sub").mkdir()
    (workdir / "sub" / "cfg.json").write_text(json.dumps({"batch_size": 5}))
    assert ConfigParser(TASK, "GRU", dataset, config_file="sub/cfg.json")["batch_size"] == 5
    assert ConfigParser(TASK, "GRU", dataset, config_file="sub/cfg")["batch_size"] == 5
    assert ConfigParser(TASK, "GRU", dataset, config_file=str(workdir / "sub" / "cfg.json"))["batch_size"] == 5


# Every layer sets 'probe' to its own number; the highest present layer must win.
LADDER = [
    ("dataset", 1, "raw_data/LADDER/config.json"),
    ("evaluator", 2, "evaluator/TrafficStateEvaluator.json"),
    ("executor", 3, "executor/TrafficStateExecutor.json"),
    ("data", 4, "data/TrafficStatePointDataset.json"),
    ("model", 5, "model/traffic_state_pred/RNN.json"),
    ("config_file", 6, "config file probe.json"),
    ("cli", 7, "command line"),
]


@pytest.fixture
def config_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of libtraffic/config that the parser reads instead of the package's."""
    copy = tmp_path / "config_copy"
    shutil.copytree(paths.CONFIG_DIR, copy)
    monkeypatch.setattr(paths, "CONFIG_DIR", copy)
    return copy


def _add_key(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("top", range(len(LADDER)), ids=[name for name, _, _ in LADDER])
def test_precedence_ladder(top: int, config_copy: Path, make_dataset, workdir: Path) -> None:
    files = {
        "evaluator": config_copy / "evaluator" / "TrafficStateEvaluator.json",
        "executor": config_copy / "executor" / "TrafficStateExecutor.json",
        "data": config_copy / "data" / "TrafficStatePointDataset.json",
        "model": config_copy / "model" / TASK / "RNN.json",
    }
    make_dataset("LADDER", hand_values(), info={"probe": 1})
    config_file, cli = None, None
    for name, value, _ in LADDER[1 : top + 1]:
        if name in files:
            _add_key(files[name], "probe", value)
        elif name == "config_file":
            (workdir / "probe.json").write_text(json.dumps({"probe": value}))
            config_file = "probe"
        else:
            cli = {"probe": str(value)}
    config = ConfigParser(TASK, "GRU", "LADDER", config_file=config_file, other_args=cli)
    _, expected, source = LADDER[top]
    assert config["probe"] == expected
    assert config.sources["probe"] == source


def test_search_space_values_beat_command_line(dataset: str) -> None:
    config = ConfigParser(TASK, "GRU", dataset, other_args={"hidden_size": "8"}).with_overrides({"hidden_size": 12})
    assert config["hidden_size"] == 12
    assert config.sources["hidden_size"] == "search space"


def test_model_not_allowed_for_task(config_copy: Path, dataset: str) -> None:
    tasks = json.loads((config_copy / "task_config.json").read_text())
    tasks["other_task"] = {"allowed_model": ["XNet"], "XNet": tasks[TASK]["GRU"]}
    (config_copy / "task_config.json").write_text(json.dumps(tasks))
    with pytest.raises(LibTrafficError, match=r"Model 'GRU' is not allowed for task 'other_task' \(it belongs to traffic_state_pred\)"):
        ConfigParser("other_task", "GRU", dataset)


def test_unknown_task_suggests(dataset: str) -> None:
    with pytest.raises(LibTrafficError, match=r"Unknown task 'traffc_state_pred'.*Did you mean 'traffic_state_pred'\?"):
        ConfigParser("traffc_state_pred", "GRU", dataset)


def test_unknown_model_suggests(dataset: str) -> None:
    with pytest.raises(LibTrafficError, match=r"Unknown model 'GRUU' \(from --model\)\. Did you mean 'GRU'\?.*GRU, LSTM, RNN"):
        ConfigParser(TASK, "GRUU", dataset)


def test_unknown_component_class(dataset: str) -> None:
    with pytest.raises(LibTrafficError, match=r"Unknown executor 'TrafficStateExecutr'\. Did you mean 'TrafficStateExecutor'\?"):
        ConfigParser(TASK, "GRU", dataset, other_args={"executor": "TrafficStateExecutr"})


def test_unknown_cli_key_suggests(dataset: str) -> None:
    with pytest.raises(LibTrafficError, match=r"Unknown config key 'hiden_size' \(--hiden_size\)\. Did you mean 'hidden_size'\?"):
        ConfigParser(TASK, "GRU", dataset, other_args={"hiden_size": "16"})


def test_unknown_config_file_key(dataset: str, workdir: Path) -> None:
    (workdir / "c.json").write_text(json.dumps({"learning_rat": 0.1}))
    with pytest.raises(LibTrafficError, match=r"Unknown config key 'learning_rat' \(config file c\.json\)\. Did you mean 'learning_rate'\?"):
        ConfigParser(TASK, "GRU", dataset, config_file="c")


@pytest.mark.parametrize("key, value, expected", [
    ("hidden_size", "abc", "an integer"),
    ("hidden_size", "1.5", "an integer"),
    ("hidden_size", 1.5, "an integer"),
    ("hidden_size", True, "an integer"),
    ("hidden_size", "nan", "an integer"),
    ("hidden_size", "inf", "an integer"),
    ("learning_rate", "nan", "a number"),
    ("learning_rate", "fast", "a number"),
    ("bidirectional", "maybe", "true or false"),
    ("bidirectional", 1, "true or false"),
    ("scaler", 3, "a string"),
])
def test_wrong_type_is_refused(dataset: str, key: str, value, expected: str) -> None:
    with pytest.raises(LibTrafficError, match=rf"Bad value .* for '{key}' \(--{key}\): expected {expected}"):
        ConfigParser(TASK, "GRU", dataset, other_args={key: value})


def test_wrong_type_in_config_file(dataset: str, workdir: Path) -> None:
    (workdir / "c.json").write_text(json.dumps({"batch_size": "16"}))
    with pytest.raises(LibTrafficError, match=r"Bad value '16' for 'batch_size' \(config file c\.json\): expected an integer"):
        ConfigParser(TASK, "GRU", dataset, config_file="c")


@pytest.mark.parametrize("key, text, expected", [
    ("hidden_size", "16", 16),
    ("hidden_size", "1e2", 100),
    ("learning_rate", "5", 5.0),
    ("learning_rate", "1e-3", 0.001),
    ("bidirectional", "True", True),
    ("bidirectional", "no", False),
    ("steps", "5,20", [5, 20]),
    ("steps", "[3, 4]", [3, 4]),
    ("metrics", "MAE", ["MAE"]),
    ("scaler", "minmax11", "minmax11"),
    ("exp_id", "12", 12),
    ("exp_id", "007", "007"),
    ("exp_id", "run-1", "run-1"),
])
def test_cli_strings_are_parsed(dataset: str, key: str, text: str, expected) -> None:
    value = ConfigParser(TASK, "GRU", dataset, other_args={key: text})[key]
    assert value == expected and type(value) is type(expected)


def test_with_overrides_returns_new_config(dataset: str) -> None:
    config = ConfigParser(TASK, "GRU", dataset, other_args={"hidden_size": "8"})
    clone = config.with_overrides({"hidden_size": 32, "learning_rate": 0.5})
    assert (clone["hidden_size"], clone["learning_rate"]) == (32, 0.5)
    assert clone.sources["hidden_size"] == "search space"
    assert (config["hidden_size"], config["learning_rate"]) == (8, 0.01)
    assert config.sources["hidden_size"] == "command line"
    with pytest.raises(TypeError):  # read-only: a changed config is a new one
        clone["batch_size"] = 3
    assert clone.with_overrides({"batch_size": 3})["batch_size"] == 3 and clone["batch_size"] == 64
    with pytest.raises(LibTrafficError, match="Unknown config key 'hiden_size'"):
        config.with_overrides({"hiden_size": 3})
    with pytest.raises(LibTrafficError, match="Bad value 'x' for 'hidden_size'"):
        config.with_overrides({"hidden_size": "x"})


def test_malformed_config_file_names_line_and_column(dataset: str, workdir: Path) -> None:
    (workdir / "bad.json").write_text('{\n  "batch_size": 16\n  "max_epoch": 2\n}\n')
    with pytest.raises(LibTrafficError) as info:
        ConfigParser(TASK, "GRU", dataset, config_file="bad")
    message = str(info.value)
    assert "bad.json is not valid JSON: Expecting ',' delimiter at line 3, column 3" in message
    assert '  "max_epoch": 2' in message


def test_missing_config_file(dataset: str, workdir: Path) -> None:
    with pytest.raises(LibTrafficError, match=r"Config file 'nothere' not found: looked for .*nothere\.json"):
        ConfigParser(TASK, "GRU", dataset, config_file="nothere")


def test_config_file_must_be_an_object(dataset: str, workdir: Path) -> None:
    (workdir / "lst.json").write_text("[1, 2]")
    with pytest.raises(LibTrafficError, match="must hold a JSON object"):
        ConfigParser(TASK, "GRU", dataset, config_file="lst")


def test_malformed_dataset_config_json(make_dataset) -> None:
    make_dataset("BADCFG", hand_values(), config_text='{"info": {"output_dim": 1,}}')
    with pytest.raises(LibTrafficError, match=r"BADCFG/config\.json is not valid JSON: .* at line 1, column 27"):
        ConfigParser(TASK, "GRU", "BADCFG")
