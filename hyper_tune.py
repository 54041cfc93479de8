"""Automatic hyperparameter tuning with Ray Tune, as LibCity's hyper_tune.py.

    python hyper_tune.py --task traffic_state_pred --model GRU --dataset METR_LA --space_file sample_space_file
"""

import sys

from libtraffic.utils.cli import (GENERAL_ARGUMENTS, add_general_arguments, base_parser, collect_overrides,
                                  extra_config_args, run_cli, str2bool)

EPILOG = """Search alg: BasicSearch (random/grid), HyperOpt, BayesOptSearch, OptunaSearch (TPE). Scheduler: FIFO, ASHA,
MedianStoppingRule, HyperBand. Values from the space file win over every other setting.
Any other config key can be fixed as --key value (e.g. --input_window 6)."""


def main() -> None:
    parser = base_parser("Tune hyperparameters of a traffic state prediction model with Ray Tune.", EPILOG)
    parser.add_argument("--space_file", type=str, default=None,
                        help="search space JSON: NAME (./NAME.json) or a path (default hyper_example, as LibCity: "
                             "learning_rate in 0.01 / 0.005 / 0.001)")
    parser.add_argument("--scheduler", type=str, default="FIFO", help="FIFO, ASHA, MedianStoppingRule or HyperBand")
    parser.add_argument("--search_alg", type=str, default="BasicSearch", help="BasicSearch, HyperOpt, BayesOptSearch or OptunaSearch")
    parser.add_argument("--num_samples", type=int, default=5, help="number of sampled trials (times each grid point)")
    parser.add_argument("--max_concurrent", type=int, default=1, help="trials running at once")
    parser.add_argument("--cpu_per_trial", type=int, default=1, help="CPUs (torch threads) per trial")
    parser.add_argument("--gpu_per_trial", type=float, default=None,
                        help="GPUs per trial, a fraction (0.25) shares a GPU (default 1 if the cluster has a GPU, else 0)")
    parser.add_argument("--resume", type=str2bool, nargs="?", const=True, default=False,
                        help="continue the interrupted experiment --exp_id")
    parser.add_argument("--dry_run", type=str2bool, nargs="?", const=True, default=False,
                        help="validate and print a few sampled configurations without training")
    parser.add_argument("--time_budget_s", type=float, default=None, help="stop starting/continuing trials after this many seconds")
    parser.add_argument("--ray_address", type=str, default=None,
                        help="Ray cluster to join, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, else a private local instance)")
    parser.add_argument("--storage_path", type=str, default=None,
                        help="folder every node sees (NFS) or URI (s3://bucket/path) holding the experiment "
                             "(default ./libtraffic/cache/hyper_tune)")
    parser.add_argument("--metric", type=str, default=None,
                        help="what ranks trials and picks each trial's best epoch, on the validation split: loss "
                             "(default, the validation loss), or an evaluator metric (MAE, MAPE, MSE, RMSE, masked_MAE, "
                             "masked_MAPE, masked_MSE, masked_RMSE, R2, EVAR) as the mean over horizons (masked_MAE) "
                             "or at one horizon (masked_MAE@12); R2 and EVAR are maximised")
    parser.add_argument("--final_seeds", type=int, default=0,
                        help="after the search, retrain the best configuration(s) this many times with fresh seeds and "
                             "report test metrics as mean ± std (default 0: no retraining; else at least 2)")
    parser.add_argument("--final_top", type=int, default=1, help="how many of the best configurations --final_seeds retrains")
    add_general_arguments(parser)
    args, extras = parser.parse_known_args()
    overrides = collect_overrides(args, ["exp_id", "seed", *GENERAL_ARGUMENTS], extra_config_args(parser, extras))
    from libtraffic.pipeline import hyper_parameter
    from libtraffic.pipeline.tune_report import TuningFailed

    try:
        hyper_parameter(task=args.task, model_name=args.model, dataset_name=args.dataset, config_file=args.config_file,
                        space_file=args.space_file, scheduler=args.scheduler, search_alg=args.search_alg,
                        other_args=overrides, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                        cpu_per_trial=args.cpu_per_trial, gpu_per_trial=args.gpu_per_trial, resume=args.resume,
                        dry_run=args.dry_run, time_budget_s=args.time_budget_s, ray_address=args.ray_address,
                        storage_path=args.storage_path, metric=args.metric,
                        final_seeds=args.final_seeds, final_top=args.final_top)
    except TuningFailed as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
