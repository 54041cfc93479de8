"""python -m libtraffic.data.convert {dcrnn,pems} ..."""

from libtraffic.data.convert.cli import main
from libtraffic.utils.cli import run_cli

run_cli(main)
