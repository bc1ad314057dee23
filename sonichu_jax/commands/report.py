"""`sonichu-jax report`: one HTML page of what training runs did."""

from __future__ import annotations

import argparse
import sys

HELP = "write one self-contained HTML report of training runs: curves, MRE table, error distribution, worst images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (train_config.json + metrics.jsonl), or folders holding runs")
    parser.add_argument("--out", default="report.html", metavar="FILE", help="the page to write (default report.html)")
    parser.add_argument("--data", metavar="SPEC",
                        help="evaluate on every labelled image of this manifest, CSV or folder (default: a data/test "
                        "folder beside the runs, else the validation split the runs used)")
    parser.add_argument("--worst", type=int, default=5, metavar="N",
                        help="worst images shown per task and model (default 5; 0 for none)")
    parser.add_argument("--no-tta", action="store_true", help="evaluate without the horizontally flipped second pass")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--json", metavar="FILE", help="also write the MRE table as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no table")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.commands import check_batch_size
    from sonichu_jax.evaluation import format_table
    from sonichu_jax.fileio import check_output, write_json
    from sonichu_jax.report import REPORT_SUFFIXES, write_report

    check_batch_size(args.batch_size)
    data = args.runs + ([args.data] if args.data else [])
    check_output(args.out, REPORT_SUFFIXES, what="report", data=data)
    if args.json:
        check_output(args.json, (".json",), data=data + [args.out])
    result = write_report(args.runs, args.out, data=args.data, worst=args.worst, tta=not args.no_tta,
                          batch_size=args.batch_size, progress=not args.quiet)
    columns = {c.name: c.report for c in result.columns}
    if columns and not args.quiet:
        print(f"MRE on {len(result.evalset.records)} images: {result.evalset.description}")
        print(format_table(columns))
    for note in result.notes:
        print(note, file=sys.stderr)
    if args.json:
        write_json(args.json, {
            "report": result.path,
            "runs": {run.name: run.path for run in result.runs},
            "evaluated_on": None if result.evalset is None else result.evalset.description,
            "tta": not args.no_tta,
            "results": {c.name: {"kind": c.kind, "passes_per_image": c.passes, **c.report.to_dict()}
                        for c in result.columns},
        })
    print(f"report: {result.path}")
    return 0
