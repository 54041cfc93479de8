"""Command line: ``python -m libtraffic.data.convert <converter> [flags]``, converters found by name."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from libtraffic.data.atomic_writer import check_dataset_name
from libtraffic.data.convert import dcrnn, pems
from libtraffic.data.convert.output import Converted, check_target, summary, target_folder, write_dataset
from libtraffic.utils.errors import LibTrafficError
from libtraffic.utils.registry import lookup

PROG = "python -m libtraffic.data.convert"


@dataclass(frozen=True)
class Converter:
    """One source format: its flags, its reader and an example command."""

    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    read: Callable[[argparse.Namespace], Converted]
    example: str


CONVERTERS: dict[str, Converter] = {
    "dcrnn": Converter(
        "DCRNN's metr-la.h5 / pems-bay.h5 with its sensor graph (locations, distances or adj_mx.pkl)",
        dcrnn.add_arguments, dcrnn.read,
        f"{PROG} dcrnn --h5 metr-la.h5 --sensor_graph data/sensor_graph --dataset METR_LA"),
    "pems": Converter(
        "PEMS03/04/07/08 of ASTGCN / STSGCN: PEMS0X.npz with PEMS0X.csv (from,to,cost)",
        pems.add_arguments, pems.read,
        f"{PROG} pems --npz PEMS04.npz --distances PEMS04.csv --dataset PEMSD4"),
}


def _overview() -> str:
    lines = [f"usage: {PROG} {{{','.join(CONVERTERS)}}} [flags]   ({PROG} NAME -h for its flags)", "",
             "Write a LibCity atomic-file dataset (raw_data/<dataset>/) from the files the papers distributed:"]
    for name, converter in CONVERTERS.items():
        lines += [f"  {name:6s} {converter.description}", f"         e.g. {converter.example}"]
    return "\n".join(lines)


def _parser(name: str, converter: Converter) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=converter.description,
                                     epilog=f"example: {converter.example}", allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    converter.add_arguments(parser)
    parser.add_argument("--dataset", required=True, help="dataset name: the folder raw_data/<dataset>/ and its file names")
    parser.add_argument("--out", metavar="DIR", help="write the dataset into DIR instead of raw_data/<dataset>/")
    parser.add_argument("--force", action="store_true", help="replace the dataset files of an existing folder")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Convert, write and print a summary; user mistakes raise LibTrafficError (exit 2 via run_cli)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(_overview())
        return
    if not argv or argv[0].startswith("-"):
        raise LibTrafficError(f"Name the format to convert first.\n{_overview()}")
    name = argv[0]
    converter = lookup(CONVERTERS, name, "converter", where=f"the first argument of {PROG}")
    args = _parser(name, converter).parse_args(argv[1:])
    check_dataset_name(args.dataset)
    folder = target_folder(args.dataset, args.out)
    check_target(folder, args.force)  # before minutes of reading, not after
    started = time.perf_counter()
    converted = converter.read(args)
    write_dataset(converted, args.dataset, folder, args.force)
    print(summary(converted, args.dataset, folder, time.perf_counter() - started))
