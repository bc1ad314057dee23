"""`sonichu-jax evaluate`: MRE of one or more models (and their ensemble) on a data set,
printed in the card's table layout and written as JSON (`sonichu_jax.evaluation`)."""

from __future__ import annotations

import argparse
import sys

HELP = "MRE per task (weighted and unweighted) of one or more models on a labelled data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="checkpoint directory; repeat for several models (adds an ensemble column)")
    parser.add_argument("--predictions", action="append", default=[], metavar="CSV",
                        help="a prediction file written by predict --out x.csv, scored as a column of its own; "
                        "repeatable, and may be mixed with --model")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="a .jsonl manifest, an FM_UIA .csv, or a folder of CSVs (or with manifest.jsonl)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="evaluate only these tasks")
    parser.add_argument("--no-tta", action="store_true", help="skip the horizontally flipped second pass")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--ensemble", choices=("median", "mean"), default="median",
                        help="how to combine several models' keypoints, coordinate-wise (default median)")
    parser.add_argument("--json", metavar="OUT",
                        help="write the results as JSON, with every image's errors (per keypoint and mean, px and mm)")
    parser.add_argument("--strict", action="store_true", help="any bad record is an error (exit 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.commands import check_batch_size
    from sonichu_jax.errors import InputError
    from sonichu_jax.evaluation import evaluate, format_table
    from sonichu_jax.fileio import check_output, write_json

    if not args.model and not args.predictions:
        raise InputError("nothing to evaluate: give --model DIR or --predictions CSV")
    check_batch_size(args.batch_size)
    if args.json:
        check_output(args.json, (".json",), inputs=args.model, data=[args.data] + args.predictions)
    result = evaluate(args.data, args.model, args.predictions, tasks=args.tasks, tta=not args.no_tta,
                      batch_size=args.batch_size, ensemble_method=args.ensemble, strict=args.strict,
                      progress=not args.quiet)
    print(format_table(result.columns))
    if any(t.n_mm for t in next(iter(result.columns.values())).tasks.values()):
        print()
        print(format_table(result.columns, unit="mm"))
    if args.json:
        write_json(args.json, result.to_dict())
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
