"""Write the METR_LA-sized synthetic dataset (207 sensors x 119 days = 34272 steps) for the benchmarks.

    python bench/make_data.py [--overwrite]

The files go to bench/raw_data/METR_LA_BENCH/ (git-ignored); an existing complete dataset is reused.
"""

from __future__ import annotations

import argparse
import time

from benchlib import BENCH_DIR, DATASET, NUM_DAYS, NUM_NODES, SEED, dataset_dir, dataset_ready
from libtraffic.data.synthetic import write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the dataset exists")
    args = parser.parse_args()
    if dataset_ready() and not args.overwrite:
        print(f"Reusing {dataset_dir()}")
        return
    start = time.perf_counter()
    folder = write_synthetic_dataset(BENCH_DIR / "raw_data", DATASET, NUM_NODES, NUM_DAYS, SEED, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    print(f"Wrote {folder} ({size:.0f} MB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
