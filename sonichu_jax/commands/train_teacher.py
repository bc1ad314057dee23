"""`sonichu-jax train-teacher`: supervised ViTPose teacher training from a config file."""

from __future__ import annotations

import argparse
import sys

HELP = "train a ViTPose teacher (per-task heads, L1 on soft-argmax coordinates) from a config file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="configs/*.py defining get_config()")
    add_run_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every supervised run shares (train-teacher, distill)."""
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="labelled data: a .jsonl manifest, a .csv file or a directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, metrics, model)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.errors import TrainingDiverged
    from sonichu_jax.train.teacher import train_teacher

    config = apply_overrides(load_config_file(args.config), args.overrides)
    try:
        result = train_teacher(config, args.data, args.out, resume=args.resume)
    except TrainingDiverged as exc:
        print(f"sonichu-jax train-teacher: {exc}", file=sys.stderr)
        return 1
    if result.val_mre is not None:
        print(f"step {result.step}: validation MRE {result.val_mre:.2f} px (best checkpoint: step {result.best_step})")
    return 0
