"""`sonichu-jax inspect`: what a checkpoint holds and how it would load, headers only."""

from __future__ import annotations

import argparse
import sys

HELP = "show what a checkpoint holds (tensor tree, layout, inferred config, what maps) without loading it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sonichu_jax.commands.convert import add_checkpoint_arguments

    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file, directory, or Hub name owner/name")
    add_checkpoint_arguments(parser)
    parser.add_argument("--task-name", default="keypoints", help="task name for a one-head checkpoint")
    parser.add_argument("--json", metavar="FILE", help="also write the account as JSON ('-' for stdout only)")


def run(args: argparse.Namespace) -> int:
    import json

    from sonichu_jax.convert.inspection import format_inspection, inspect_checkpoint
    from sonichu_jax.commands.convert import checkpoint_inputs
    from sonichu_jax.fileio import check_output, write_json

    if args.json and args.json != "-":
        check_output(args.json, (".json",), "JSON file", inputs=checkpoint_inputs(args.checkpoint))
    info = inspect_checkpoint(args.checkpoint, layout=args.layout, rename=args.rename, entry=args.entry,
                              task_name=args.task_name)
    if args.json == "-":
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        print(format_inspection(info))
        if args.json:
            write_json(args.json, info)
    if not info.get("loads"):
        print(f"sonichu-jax inspect: error: {args.checkpoint} would not load as a Sonichu model", file=sys.stderr)
        return 2
    return 0
