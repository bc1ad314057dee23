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
    parser.add_argument("--overlay", metavar="OUTDIR",
                        help="write <name>_<task>.png overlays here (sub-folders as in the inputs)")
    parser.add_argument("--out", metavar="FILE",
                        help="write results as .json (pixels and normalised coordinates) or .csv "
                        "(the FM_UIA layout, which evaluate --predictions scores)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the config's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    parser.add_argument("--rename", action="append", metavar="REGEX=REPLACEMENT", default=[],
                        help="rename checkpoint tensors before loading (repeatable; see `sonichu-jax convert --help`)")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.commands import check_batch_size, warn_unflipped
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import check_output, write_json
    from sonichu_jax.inference import expand_inputs, iter_predictions, relative_names
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.overlay import save_overlay
    from sonichu_jax.preprocess import SonichuPreprocessor
    from sonichu_jax.prediction_csv import write_predictions_csv

    check_batch_size(args.batch_size)
    files, missing = expand_inputs(args.inputs)
    if not files and not missing:
        raise InputError(f"no images found in {', '.join(args.inputs)}")
    if args.out:
        check_output(args.out, (".json", ".csv"), inputs=[args.model], data=args.inputs + files)
    if args.overlay:  # an overlay never replaces an input, nor becomes one of the next run
        check_output(args.overlay, what="overlay folder", folder=True, inputs=[args.model], data=args.inputs + files)
    model = SonichuModel.from_pretrained(args.model, dtype=args.dtype, rename=args.rename)
    model.cfg.task(args.task)
    if not args.no_tta:
        warn_unflipped(model.cfg, [args.task], args.model)
    prep = SonichuPreprocessor.from_pretrained(args.model, model.cfg)
    overlay_names = dict(zip(files, relative_names(files)))

    done, failed = [], [(m, "no such file or directory") for m in missing]
    for pred in iter_predictions(model, prep, files, args.task, tta=not args.no_tta,
                                 batch_size=args.batch_size, progress=not args.quiet):
        if pred.error:
            failed.append((pred.name, pred.error))
            continue
        done.append(pred)
        if args.overlay:
            stem = os.path.splitext(overlay_names[pred.name])[0]
            save_overlay(pred.name, pred.pixels, args.task, os.path.join(args.overlay, f"{stem}_{args.task}.png"))

    if not args.quiet:
        print(f"{'image':<40} {'kp':>3} {'x':>9} {'y':>9}")
        for p in done:
            for k, (x, y) in enumerate(p.pixels):
                print(f"{os.path.basename(p.name):<40} {k:>3} {x:>9.2f} {y:>9.2f}")
    if args.out and args.out.lower().endswith(".csv"):
        write_predictions_csv(args.out, args.task, done)
    elif args.out:
        write_json(args.out, {
            "task": args.task,
            "model": os.path.abspath(args.model),
            "tta": not args.no_tta,
            "results": [
                {"image": p.name, "width": p.orig_size[0], "height": p.orig_size[1],
                 "keypoints": [[float(x), float(y)] for x, y in p.pixels],
                 "keypoints_normalised": [[float(x), float(y)] for x, y in p.normalised]}
                for p in done
            ],
            "failed": [{"image": n, "error": e} for n, e in failed],
        })
    for name, error in failed:
        print(f"skipped {name}: {error}", file=sys.stderr)
    print(f"{len(done)} predicted, {len(failed)} failed", file=sys.stderr)
    return 2 if failed else 0
