"""`sonichu-jax distill`: train one student against the median of several teachers."""

from __future__ import annotations

import argparse

from sonichu_jax.commands.run_options import add_run_arguments, load_run_config, report, run_stage

HELP = "distil several teachers (their coordinate-wise median) into one student"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="configs/distill*.py defining get_config()")
    parser.add_argument("--teachers", nargs="+", metavar="DIR",
                        help="teacher run directories (their model/) or checkpoint directories "
                             "(default: distill.teachers)")
    parser.add_argument("--data", metavar="SPEC",
                        help="labelled data: a .jsonl manifest, a .csv file or a directory (default: data.source)")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.train.distill import DistillConfig, distill

    config = load_run_config(args, DistillConfig)
    result = run_stage(lambda: distill(config, args.teachers, args.data, args.out, resume=args.resume), args.out)
    return report(result, "student validation MRE")
