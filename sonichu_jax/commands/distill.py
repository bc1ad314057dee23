"""`sonichu-jax distill`: train one student against the median of several teachers."""

from __future__ import annotations

import argparse
import sys

from sonichu_jax.commands.train_teacher import add_run_arguments

HELP = "distil several teachers (their coordinate-wise median) into one student"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="configs/distill*.py defining get_config()")
    parser.add_argument("--teachers", required=True, nargs="+", metavar="DIR",
                        help="teacher run directories (their model/) or checkpoint directories")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.errors import ConfigError
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.distill import DistillConfig, distill
    from sonichu_jax.errors import TrainingDiverged

    config = apply_overrides(load_config_file(args.config), args.overrides)
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"{args.config} returns a {type(config).__name__}, not a DistillConfig")
    try:
        result = distill(config, args.teachers, args.data, args.out, resume=args.resume)
    except TrainingDiverged as exc:
        print(f"sonichu-jax distill: {exc}", file=sys.stderr)
        return 1
    if result.val_mre is not None:
        print(f"step {result.step}: student validation MRE {result.val_mre:.2f} px")
    return 0
