"""Command-line plumbing shared by run_model.py and hyper_tune.py."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from libtraffic.utils.errors import LibTrafficError

_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def str2bool(text: str) -> bool:
    try:
        return _BOOLS[text.lower()]
    except KeyError as err:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from err


# LibCity's general flags (help text, type); all default to None so only typed values override.
GENERAL_ARGUMENTS: dict[str, tuple[type | Callable, str]] = {
    "gpu": (str2bool, "use a GPU when available (true/false)"),
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


def base_parser(description: str, epilog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=str, default="traffic_state_pred", help="task name (traffic_state_pred)")
    parser.add_argument("--model", type=str, default="GRU", help="model name, e.g. GRU or STID (all: allowed_model in libtraffic/config/task_config.json)")
    parser.add_argument("--dataset", type=str, default="METR_LA", help="dataset folder under ./raw_data")
    parser.add_argument("--config_file", type=str, default=None, help="JSON config file: NAME (./NAME.json) or a path")
    parser.add_argument("--exp_id", type=str, default=None, help="experiment id (default: a new random one)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    return parser


def add_general_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("general config keys (any other config key also works as --key value)")
    for name, (kind, text) in GENERAL_ARGUMENTS.items():
        group.add_argument(f"--{name}", type=kind, default=None, help=text)


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


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main``; a user mistake prints 'Error: ...' and exits 2 without a traceback."""
    try:
        main()
    except LibTrafficError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        _exit_interrupted(f"\n{err or 'Interrupted.'}")


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
