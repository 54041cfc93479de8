"""python -m libtraffic.report --exp_id N: (re)write the tuning report of experiment N."""

from __future__ import annotations

import argparse

from libtraffic.utils.cli import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m libtraffic.report",
        description="Write libtraffic/cache/<exp_id>/hyper_tune_report.html (and its PNG figures) from the "
                    "experiment's results files; works on finished and interrupted experiments.")
    parser.add_argument("--exp_id", type=str, required=True, help="experiment id (a folder of libtraffic/cache)")
    args = parser.parse_args()
    from libtraffic.report import write_report

    print(f"Tuning report: {write_report(args.exp_id)}")


if __name__ == "__main__":
    run_cli(main)
