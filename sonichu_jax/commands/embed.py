"""`sonichu-jax embed`: backbone features of images, written with their file names."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "backbone features (embeddings) of images or folders of images, as .safetensors or .npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    parser.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (config.json + weights)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="features.safetensors or features.npz: a 'features' array, row i for image 'names'[i]")
    parser.add_argument("--pool", choices=("mean", "none"), default="mean",
                        help="mean over the token grid -> (N, D) (default), or none -> (N, gh, gw, D)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the config's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.commands import check_batch_size
    import numpy as np

    from sonichu_jax.embeddings import FEATURE_SUFFIXES, save_features
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import check_output
    from sonichu_jax.inference import expand_inputs, iter_embeddings
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor

    check_batch_size(args.batch_size)
    files, missing = expand_inputs(args.inputs)
    check_output(args.out, FEATURE_SUFFIXES, "feature file", inputs=[args.model], data=args.inputs + files)
    if not files and not missing:
        raise InputError(f"no images found in {', '.join(args.inputs)}")
    model = SonichuModel.from_pretrained(args.model, dtype=args.dtype)
    prep = SonichuPreprocessor.from_pretrained(args.model, model.cfg)

    names, rows = [], []
    failed = [(m, "no such file or directory") for m in missing]
    for item in iter_embeddings(model, prep, files, pool=args.pool, batch_size=args.batch_size,
                                progress=not args.quiet):
        if item.error:
            failed.append((item.name, item.error))
        else:
            names.append(item.name)
            rows.append(item.features)
    if rows:
        features = np.stack(rows)
        save_features(args.out, names, features,
                      {"pool": args.pool, "model": os.path.abspath(args.model)})
        print(f"wrote {args.out}: features {tuple(features.shape)} of {len(names)} images", file=sys.stderr)
    for name, error in failed:
        print(f"skipped {name}: {error}", file=sys.stderr)
    if not rows:
        print("no image could be read; nothing written", file=sys.stderr)
    return 2 if failed else 0
