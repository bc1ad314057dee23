"""`sonichu-jax pack`: a data set into ArrayRecord shards (`sonichu_jax.data.shards`),
which every command that reads a data spec or a frame folder then reads as one."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "pack a data set (or a folder of frames) into ArrayRecord shards that training reads directly"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a data spec (manifest, CSV, folder of CSVs) or, with --frames, "
                        "a folder of frames")
    parser.add_argument("--out", required=True, metavar="DIR", help="the pack's folder (must not exist or be empty "
                        "unless --force)")
    parser.add_argument("--frames", action="store_true", help="SRC is a folder of unlabelled frames (I-JEPA)")
    parser.add_argument("--store", choices=("decoded", "encoded"), default="decoded",
                        help="decoded pixels (default; no decode cost in training) or the files' encoded bytes "
                        "(smaller); README 'Packed data' has both rates")
    parser.add_argument("--shard-size", type=int, default=4096, metavar="N", help="frames per shard (default 4096)")
    parser.add_argument("--force", action="store_true", help="replace the pack already at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sonichu_jax.data.shards import is_pack, write_pack
    from sonichu_jax.data.sources import load_frames, load_source
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import atomic_dir, check_output

    if args.shard_size < 1:
        raise InputError(f"--shard-size must be >= 1, got {args.shard_size}")
    out = check_output(args.out, what="pack folder", folder=True, data=[args.src])
    replace = os.path.isdir(out) and bool(os.listdir(out))
    if replace and not args.force:
        raise InputError(f"--out {args.out} already exists and is not empty; pass --force to replace the pack there")
    if replace and not is_pack(out):
        raise InputError(f"--out {args.out} is not a pack (no pack.json); refusing to replace it, even with --force")
    source = load_frames(args.src) if args.frames else load_source(args.src)
    with atomic_dir(out, replace=replace) as tmp, \
            tqdm(total=len(source), desc="pack", unit="img", disable=args.quiet) as bar:
        meta = write_pack(source.records, tmp, store=args.store, shard_size=args.shard_size,
                          progress=bar.update, warn=lambda text: tqdm.write(text, file=sys.stderr))
    written = len(meta["records"])
    print(f"packed {written} frames ({args.store}) into {len(meta['shards'])} shards in {out}; "
          f"skipped {meta['skipped']} unreadable", file=sys.stderr)
    return 0
