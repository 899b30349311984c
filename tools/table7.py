"""The paper's Table VII layer ablation on any MVTec AD category, as one command.

Trains the seven layer sets of Table VII (6; 5,6; ...; 0..6) with the hard and the soft boundary
(sharing one pretrained AE per seed), then prints maxBA per row for both boundaries.

    python -m tools.table7 leather -dp <MVTec AD root> --out results/table7-leather [--seeds 0 1 2]
        [--preset cpu] [--jobs N] [-- <flags for every run, e.g. --no-selectors>]
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tools import report, sweep
from utils import cli

TABLE7_LAYER_SETS = ("6", "5,6", "4,5,6", "3,4,5,6", "2,3,4,5,6", "1,2,3,4,5,6", "0,1,2,3,4,5,6")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--"):] if "--" in argv else []
    own = argv[: len(argv) - len(passthrough)]
    p = cli.FlagParser("python -m tools.table7", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("category")
    p.add_argument("-dp", "--data-path", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", nargs="+", default=["0"])
    p.add_argument("--preset", nargs="*", default=[])
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(own)
    sweep_argv = ["mvtec", "--classes", args.category, "--seeds", *args.seeds, "--boundary", "hard", "soft",
                  "--layer-sets", *TABLE7_LAYER_SETS, "-dp", args.data_path, "--out", args.out,
                  "--jobs", str(args.jobs), *(["--preset", *args.preset] if args.preset else []), *passthrough]
    status = sweep.main(sweep_argv)
    report_status = report.main([args.out])
    return status or report_status


if __name__ == "__main__":
    sys.exit(main())
