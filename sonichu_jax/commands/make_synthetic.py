"""`sonichu-jax make-synthetic`: write a synthetic B-mode keypoint data set."""

from __future__ import annotations

import argparse
import sys

HELP = "write a synthetic B-mode ultrasound data set (images + manifest.jsonl, optional FM_UIA CSVs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (must not exist or be empty)")
    parser.add_argument("--n", type=int, required=True, metavar="N", help="images per task")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to generate (default: all nine)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels, 32-4096 (default 256)")
    parser.add_argument("--csv", action="store_true", help="also write one FM_UIA-style <task>.csv per task")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sonichu_jax.data.synthetic import check_synthetic_request, write_synthetic_dataset

    out, tasks = check_synthetic_request(args.out, args.n, args.tasks, args.seed, args.size)
    with tqdm(total=args.n * len(tasks), desc="make-synthetic", unit="img", disable=args.quiet) as bar:
        write_synthetic_dataset(out, args.n, tasks=tasks, seed=args.seed, size=args.size, csv=args.csv,
                                progress=bar.update)
    print(f"wrote {args.n * len(tasks)} images ({len(tasks)} tasks, {args.size}x{args.size}) to {out}", file=sys.stderr)
    return 0
