"""`sonichu-jax train-teacher`: supervised ViTPose teacher training from a config file."""

from __future__ import annotations

import argparse

from sonichu_jax.commands.run_options import add_run_arguments, load_run_config, report, run_stage

HELP = "train a ViTPose teacher (per-task heads, L1 on soft-argmax coordinates) from a config file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="configs/*.py defining get_config()")
    parser.add_argument("--data", metavar="SPEC",
                        help="labelled data: a .jsonl manifest, a .csv file or a directory (default: data.source)")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.train.configlib import TeacherConfig
    from sonichu_jax.train.supervised import train_teacher

    config = load_run_config(args, TeacherConfig)
    return report(run_stage(lambda: train_teacher(config, args.data, args.out, resume=args.resume), args.out))
