"""Automatic hyperparameter tuning with Ray Tune, as LibCity's hyper_tune.py.

    python hyper_tune.py --task traffic_state_pred --model GRU --dataset METR_LA --space_file sample_space_file
"""

import signal
import sys

from libtraffic.tune.options import add_flags, from_namespace
from libtraffic.utils.cli import (GENERAL_ARGUMENTS, add_general_arguments, base_parser, collect_overrides,
                                  extra_config_args, run_cli)

EPILOG = """Search alg: BasicSearch (random/grid), HyperOpt, BayesOptSearch, OptunaSearch (TPE). Scheduler: FIFO, ASHA,
MedianStoppingRule, HyperBand. Values from the space file win over every other setting.
Any other config key can be fixed as --key value (e.g. --input_window 6)."""


def main() -> None:
    parser = base_parser("Tune hyperparameters of a traffic state prediction model with Ray Tune.", EPILOG)
    add_flags(parser)
    add_general_arguments(parser)
    args, extras = parser.parse_known_args()
    from libtraffic.tune.interrupt import Terminated, raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)  # until the tuning run puts its own handler
    overrides = collect_overrides(args, ["exp_id", "seed", *GENERAL_ARGUMENTS], extra_config_args(parser, extras))
    options = from_namespace(args)
    from libtraffic.tune import hyper_parameter
    from libtraffic.tune.finish import TuningFailed

    try:
        hyper_parameter(task=args.task, model_name=args.model, dataset_name=args.dataset, config_file=args.config_file,
                        other_args=overrides, **vars(options))
    except TuningFailed as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    except Terminated as err:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one while the process ends changes nothing
        print(f"\n{err}", file=sys.stderr, flush=True)
        sys.exit(143)


if __name__ == "__main__":
    run_cli(main, interrupted="Interrupted before the tuning started: nothing was saved. Start again with the same "
                              "command.")
