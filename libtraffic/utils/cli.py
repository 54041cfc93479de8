"""Command-line plumbing shared by run_model.py and hyper_tune.py."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from libtraffic.data.builtin import BUILTIN_DATASETS
from libtraffic.utils import paths
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.values import parse_bool


def str2bool(text: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


#: LibCity's defaults of the names a run is built from (its run_model.py / hyper_tune.py flags).
DEFAULT_NAMES = {"task": "traffic_state_pred", "model": "GRU", "dataset": "METR_LA"}


def default_names(task: str | None, model: str | None, dataset: str | None) -> tuple[str, str, str]:
    """DEFAULT_NAMES for the names not given; an empty name stays empty and is refused by name."""
    given = {"task": task, "model": model, "dataset": dataset}
    return tuple(DEFAULT_NAMES[k] if v is None else v for k, v in given.items())


# LibCity's general flags (help text, type); all default to None so only typed values override.
GENERAL_ARGUMENTS: dict[str, tuple[type | Callable, str]] = {
    "gpu": (str2bool, "use a GPU when one is available (true/false)"),
    "gpu_id": (int, "index of the GPU to use"),
    "train_rate": (float, "fraction of samples used for training"),
    "eval_rate": (float, "fraction of samples used for validation"),
    "batch_size": (int, "batch size"),
    "learning_rate": (float, "learning rate"),
    "max_epoch": (int, "number of training epochs"),
    "dataset_class": (str, "dataset class (default from task_config.json)"),
    "executor": (str, "executor class (default from task_config.json)"),
    "evaluator": (str, "evaluator class (default from task_config.json)"),
}


def _read_config(*parts: str) -> dict[str, Any]:
    return json.loads((paths.CONFIG_DIR.joinpath(*parts)).read_text(encoding="utf-8"))


def _shared_defaults() -> dict[str, Any]:
    """The defaults every model starts from (base, dataset class, executor, evaluator), for --help; a model's
    own JSON file may set its own."""
    files = [("base.json",), ("data", "TrafficStatePointDataset.json"), ("executor", "TrafficStateExecutor.json"),
             ("evaluator", "TrafficStateEvaluator.json")]
    defaults: dict[str, Any] = {}
    for parts in files:
        defaults |= _read_config(*parts)
    return defaults


def base_parser(description: str, epilog: str) -> argparse.ArgumentParser:
    """The flags both CLIs share. Reads only JSON files: --help answers without loading torch or Ray."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    task = DEFAULT_NAMES["task"]
    models = _read_config("task_config.json")[task]["allowed_model"]
    builtin = ", ".join(BUILTIN_DATASETS)
    parser.add_argument("--task", type=str, default=task, help=f"task name (default {task})")
    parser.add_argument("--model", type=str, default=DEFAULT_NAMES["model"],
                        help=f"model name (default {DEFAULT_NAMES['model']}): {', '.join(models)}")
    parser.add_argument("--dataset", type=str, default=DEFAULT_NAMES["dataset"],
                        help=f"dataset: a folder of LibCity atomic files under ./raw_data (default "
                             f"{DEFAULT_NAMES['dataset']}, which you bring yourself); built in, generated on first use: "
                             f"{builtin}")
    parser.add_argument("--config_file", type=str, default=None,
                        help="JSON file of config keys: NAME (./NAME.json) or a path (default: none)")
    parser.add_argument("--exp_id", type=str, default=None,
                        help="experiment id, the folder libtraffic/cache/<exp_id> (default: a new random one)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    return parser


def add_general_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("general config keys (any other config key also works as --key value; "
                                      "defaults are libtraffic/config's, a model's own file may change them)")
    defaults = _shared_defaults()
    for name, (kind, text) in GENERAL_ARGUMENTS.items():
        shown = f" (default {json.dumps(defaults[name])})" if name in defaults else ""
        group.add_argument(f"--{name}", type=kind, default=None, help=text + shown)


def extra_config_args(parser: argparse.ArgumentParser, extras: list[str]) -> dict[str, str]:
    """'--key value' / '--key=value' pairs beyond the declared flags, as raw strings.

    Their keys and types are checked against the config defaults by ConfigParser.
    """
    result: dict[str, str] = {}
    i = 0
    while i < len(extras):
        item = extras[i]
        if not item.startswith("--") or len(item) == 2:
            parser.error(f"unexpected argument {item!r}; flags look like --key value")
        key, eq, value = item[2:].partition("=")
        if not eq:
            if i + 1 >= len(extras) or extras[i + 1].startswith("--"):
                parser.error(f"flag --{key} needs a value")
            value = extras[i + 1]
            i += 1
        result[key] = value
        i += 1
    return result


def collect_overrides(args: argparse.Namespace, names: list[str], extras: dict[str, str]) -> dict[str, object]:
    """Typed flags that were given (not None), plus the raw extra --key value pairs."""
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    clash = set(given) & set(extras)
    if clash:
        raise LibTrafficError(f"Flag --{clash.pop()} was given twice.")
    return {**given, **extras}


def run_cli(main: Callable[[], object], interrupted: str = "Interrupted.") -> None:
    """Run ``main``; a user mistake prints 'Error: ...' and exits 2 without a traceback. A Ctrl-C exits
    130 with its message, or ``interrupted`` for one that came before the run set a message of its own
    (Python's bare KeyboardInterrupt, e.g. while the libraries load)."""
    try:
        main()
    except LibTrafficError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        _exit_interrupted(f"\n{str(err) or interrupted}")


def _exit_interrupted(message: str) -> NoReturn:
    """Print the Ctrl-C message and exit with code 130. Another Ctrl-C while the process ends (Ray's
    shutdown, interpreter exit) ends it at once with the same code and message, instead of Python's
    death by SIGINT (exit -2) from a second KeyboardInterrupt."""
    printed = []

    def at_once(signum, frame) -> None:
        if not printed:
            print(message, file=sys.stderr, flush=True)
        os._exit(130)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, at_once)
    print(message, file=sys.stderr, flush=True)
    printed.append(True)
    sys.exit(130)
