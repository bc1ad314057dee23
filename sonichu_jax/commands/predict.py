"""`sonichu-jax predict`: keypoints in original-image pixels for images or folders."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "predict a task's keypoints (original-image pixels) for images or folders of images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    parser.add_argument("--task", required=True, help="task name, e.g. HC or fetal_femur")
    parser.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (config.json + weights)")
    parser.add_argument("--no-tta", action="store_true", help="skip the horizontally flipped second pass")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--overlay", metavar="OUTDIR", help="write <name>_<task>.png overlays here")
    parser.add_argument("--out", metavar="FILE", help="write results as .json or .csv")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the config's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    parser.add_argument("--rename", action="append", metavar="REGEX=REPLACEMENT", default=[],
                        help="rename checkpoint tensors before loading (repeatable; see `sonichu-jax convert --help`)")


def _rows(predictions):
    for p in predictions:
        for k, (x, y) in enumerate(p.pixels):
            yield [p.name, k, round(float(x), 3), round(float(y), 3), p.orig_size[0], p.orig_size[1]]


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import write_csv, write_json
    from sonichu_jax.inference import expand_inputs, iter_predictions
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.overlay import save_overlay
    from sonichu_jax.preprocess import SonichuPreprocessor

    if args.out and not args.out.lower().endswith((".json", ".csv")):
        raise InputError(f"--out must end in .json or .csv, got {args.out}")
    files, missing = expand_inputs(args.inputs)
    if not files and not missing:
        raise InputError(f"no images found in {', '.join(args.inputs)}")
    model = SonichuModel.from_pretrained(args.model, dtype=args.dtype, rename=args.rename)
    model.cfg.task(args.task)
    prep = SonichuPreprocessor.from_pretrained(args.model)

    done, failed = [], [(m, "no such file or directory") for m in missing]
    for pred in iter_predictions(model, prep, files, args.task, tta=not args.no_tta,
                                 batch_size=args.batch_size, progress=not args.quiet):
        if pred.error:
            failed.append((pred.name, pred.error))
            continue
        done.append(pred)
        if args.overlay:
            stem = os.path.splitext(os.path.basename(pred.name))[0]
            save_overlay(pred.name, pred.pixels, args.task, os.path.join(args.overlay, f"{stem}_{args.task}.png"))

    if not args.quiet:
        print(f"{'image':<40} {'kp':>3} {'x':>9} {'y':>9}")
        for name, k, x, y, _, _ in _rows(done):
            print(f"{os.path.basename(name):<40} {k:>3} {x:>9.2f} {y:>9.2f}")
    if args.out:
        if args.out.lower().endswith(".csv"):
            write_csv(args.out, ["image", "keypoint", "x", "y", "width", "height"], list(_rows(done)))
        else:
            write_json(args.out, {
                "task": args.task,
                "model": os.path.abspath(args.model),
                "tta": not args.no_tta,
                "results": [
                    {"image": p.name, "width": p.orig_size[0], "height": p.orig_size[1],
                     "keypoints": [[float(x), float(y)] for x, y in p.pixels]}
                    for p in done
                ],
                "failed": [{"image": n, "error": e} for n, e in failed],
            })
    for name, error in failed:
        print(f"skipped {name}: {error}", file=sys.stderr)
    print(f"{len(done)} predicted, {len(failed)} failed", file=sys.stderr)
    return 2 if failed else 0
