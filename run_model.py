"""Train and evaluate one model, as LibCity's run_model.py.

    python run_model.py --task traffic_state_pred --model GRU --dataset METR_LA
"""

from libtraffic.utils.cli import (GENERAL_ARGUMENTS, add_general_arguments, base_parser, collect_overrides,
                                  extra_config_args, run_cli, str2bool)

EPILOG = """Any other config key can be set as --key value (e.g. --hidden_size 128 --input_window 6);
its type is checked against the defaults in libtraffic/config/. Precedence: command line >
--config_file > model > dataset class > executor > evaluator > raw_data/<DATASET>/config.json.

Evaluate a saved model:      --train false --exp_id N
Resume training at epoch K:  --epoch K --exp_id N   (K from model_cache/<model>_<dataset>_epoch<K>.tar)"""

# run_model.py's own config-key flags: (type, help).
RUN_ARGUMENTS = {
    "saved_model": (str2bool, "save the trained model (default true)"),
    "train": (str2bool, "train (true, the default) or only evaluate the saved model of --exp_id (false)"),
    "epoch": (int, "resume training of --exp_id from its checkpoint after epoch K (default 0: a new run)"),
    "best_metric": (str, "what picks the best epoch on the validation split: loss (default) or an evaluator "
                         "metric, averaged (masked_MAE) or at one horizon (masked_MAE@12)"),
}


def main() -> None:
    parser = base_parser("Train and evaluate a traffic state prediction model.", EPILOG)
    group = parser.add_argument_group("training and evaluation")
    for name, (kind, text) in RUN_ARGUMENTS.items():
        group.add_argument(f"--{name}", type=kind, default=None, help=text)
    add_general_arguments(parser)
    args, extras = parser.parse_known_args()
    names = ["exp_id", "seed", "epoch", "best_metric", *GENERAL_ARGUMENTS]
    overrides = collect_overrides(args, names, extra_config_args(parser, extras))
    from libtraffic.pipeline import run_model  # torch loads here, after --help has answered

    run_model(task=args.task, model_name=args.model, dataset_name=args.dataset, config_file=args.config_file,
              saved_model=args.saved_model, train=args.train, other_args=overrides)


if __name__ == "__main__":
    run_cli(main)
