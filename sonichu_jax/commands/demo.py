"""`sonichu-jax demo`: the card's whole recipe, tiny, on the embedded synthetic data
(`sonichu_jax.train.recipe`): about 4 minutes on a 2-core CPU, about 2 with --quick."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "run the whole recipe on synthetic data with tiny models (CPU): pretrain, teachers, ensemble, student"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where everything goes (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 2 minutes) for CI")
    parser.add_argument("--force", action="store_true", 
                        help="replace what an earlier demo wrote in --out (nothing else there is touched)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--json", metavar="FILE", help="also write the final table as JSON (default OUT/results.json)")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.fileio import check_output, write_json
    from sonichu_jax.evaluation import format_table, table_dict
    from sonichu_jax.train.recipe import SYNTHETIC_SIZE, run_demo

    if args.json:
        check_output(args.json, (".json",))
    result = run_demo(args.out, quick=args.quick, seed=args.seed, force=args.force)
    json_path = args.json or os.path.join(result.out, "results.json")
    print(f"\n=== results: MRE in pixels of the {SYNTHETIC_SIZE} px test images ({result.test_images} images)")
    print(format_table(result.columns))
    write_json(json_path, {"profile": result.profile, "minutes": round(result.minutes, 2),
                           "results": table_dict(result.columns), "models": result.models})
    print(f"\ncheckpoints: {result.artefacts['backbone']}, {result.out}/teachers/*/model, {result.models['student']}")
    print(f"overlays:    {result.overlays}")
    print(f"results:     {json_path}")
    print(f"report:      {result.artefacts['report']}")
    print(f"took {result.minutes:.1f} min", file=sys.stderr)
    return 0
