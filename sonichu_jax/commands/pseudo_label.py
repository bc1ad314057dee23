"""`sonichu-jax pseudo-label`: a teacher's flip-TTA predictions as a pseudo-label manifest."""

from __future__ import annotations

import argparse
import math
import sys

HELP = "write a teacher's predictions (flip TTA) as pseudo-labels with a flip-disagreement confidence"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="teacher checkpoint directory")
    parser.add_argument("--images", required=True, metavar="SPEC",
                        help="a .jsonl manifest or .csv (labels ignored), or a folder of frames (needs --task)")
    parser.add_argument("--out", required=True, metavar="FILE.jsonl", help="pseudo-label manifest to write")
    parser.add_argument("--task", help="task of every frame in a frame folder")
    parser.add_argument("--max-disagreement", type=float, default=math.inf, metavar="PX",
                        help="leave out images whose plain and mirrored predictions differ by more "
                             "than PX original pixels on average (default: keep all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.commands import check_batch_size
    import os

    from sonichu_jax.data.sources import load_frames, load_source
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import check_output
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.pseudo_label import write_pseudo_labels

    check_batch_size(args.batch_size)
    if not args.max_disagreement >= 0:  # NaN too
        raise InputError(f"the disagreement threshold must be >= 0 px, got {args.max_disagreement}")
    check_output(args.out, (".jsonl",), "pseudo-label manifest", inputs=[args.model], data=[args.images])
    model = SonichuModel.from_pretrained(args.model)
    if os.path.isdir(args.images) and args.task:
        records = list(load_frames(args.images))
    else:
        records = list(load_source(args.images, tasks=model.cfg.tasks, check_bounds=False))
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="pseudo-label", unit="img")
    counts = write_pseudo_labels(
        model, records, args.out, task=args.task, batch_size=args.batch_size,
        max_disagreement_px=args.max_disagreement, progress=bar.update if bar else None,
    )
    if bar is not None:
        bar.close()
    print(f"{counts['written']} pseudo-labels written to {args.out}, "
          f"{counts['rejected']} above the disagreement threshold", file=sys.stderr)
    return 0
