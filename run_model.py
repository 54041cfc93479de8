"""Train and evaluate one model, as LibCity's run_model.py.

    python run_model.py --task traffic_state_pred --model GRU --dataset METR_LA
"""

from libtraffic.pipeline import run_model
from libtraffic.utils.cli import (GENERAL_ARGUMENTS, add_general_arguments, base_parser, collect_overrides,
                                  extra_config_args, run_cli, str2bool)

EPILOG = """Any other config key can be set as --key value (e.g. --hidden_size 128 --input_window 6);
its type is checked against the defaults in libtraffic/config/. Precedence: command line >
--config_file > model > dataset class > executor > evaluator > raw_data/<DATASET>/config.json."""


def main() -> None:
    parser = base_parser("Train and evaluate a traffic state prediction model.", EPILOG)
    parser.add_argument("--saved_model", type=str2bool, default=None, help="save the trained model (default true)")
    parser.add_argument("--train", type=str2bool, default=None,
                        help="train (true) or only evaluate the saved model of --exp_id (false)")
    add_general_arguments(parser)
    args, extras = parser.parse_known_args()
    overrides = collect_overrides(args, ["exp_id", "seed", *GENERAL_ARGUMENTS], extra_config_args(parser, extras))
    run_model(task=args.task, model_name=args.model, dataset_name=args.dataset, config_file=args.config_file,
              saved_model=args.saved_model, train=args.train, other_args=overrides)


if __name__ == "__main__":
    run_cli(main)
