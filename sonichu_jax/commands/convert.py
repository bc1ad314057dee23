"""`sonichu-jax convert`: a checkpoint of any supported layout -> a Flax checkpoint
directory (or a PyTorch one, for export), with a report of what happened to every tensor.
The work is `sonichu_jax.conversion.convert_to_directory`; see docs/checkpoints.md."""

from __future__ import annotations

import argparse
import os

HELP = "convert a ViT / ViTPose / I-JEPA / Sonichu checkpoint to Flax (or export it to PyTorch layouts)"


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that open a checkpoint (convert, inspect, parity)."""
    parser.add_argument("--layout", help="source layout (default: detected from the tensor names): "
                        "sonichu, vitpose, hf-vitpose, timm-vit, ijepa, flax")
    parser.add_argument("--rename", action="append", metavar="REGEX=REPLACEMENT", default=[],
                        help="rename tensors before the layout is detected (Python re.sub; repeatable, applied in "
                        "order; split at the last '=')")
    parser.add_argument("--entry", metavar="KEY", help="the entry of a .pth/.ckpt container that holds the state "
                        "dict, e.g. state_dict_ema (default: found automatically)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="checkpoint file (.safetensors, .pth, .pt, .bin, .ckpt, "
                        ".pth.tar, a shard index), a directory holding one (+ config.json), or a Hub name owner/name")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (must be new or empty "
                        "unless --force)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--to", choices=("flax", "sonichu", "hf-vitpose"), default="flax",
                        help="output layout (default flax)")
    parser.add_argument("--task-name", default="keypoints", help="task name for a one-head checkpoint (default keypoints)")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="model input size; a learned position table of another grid is resized bicubically")
    parser.add_argument("--num-heads", type=int, help="attention heads, when the checkpoint's config does not say "
                        "(default width // 64)")
    parser.add_argument("--encoder", choices=("target_encoder", "encoder"), default="target_encoder",
                        help="I-JEPA: which encoder becomes the backbone (default target_encoder)")
    parser.add_argument("--strict", action="store_true", help="refuse tensors the model does not use")
    parser.add_argument("--report", action="store_true", help="also list every mapped tensor")
    parser.add_argument("--report-json", metavar="FILE", help="write the full report as JSON (also on failure)")
    parser.add_argument("--force", action="store_true", help="write into an existing --out directory, replacing "
                        "only the files this conversion writes")


def checkpoint_inputs(source: str) -> list[str]:
    """What opening ``source`` reads: the folder, or the file and the configs beside it."""
    if not os.path.isfile(source):
        return [source]
    return [source] + [os.path.join(os.path.dirname(source), n) for n in ("config.json", "preprocessor_config.json")]


def _print_report(report, listing: bool) -> None:
    print(report.summary())
    if listing:
        print(report.listing())


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.conversion import convert_to_directory
    from sonichu_jax.convert import ConversionError
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import check_output, write_json

    if args.report_json:
        check_output(args.report_json, (".json",), "report file", inputs=checkpoint_inputs(args.source) + [args.out])
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise InputError(f"{args.out} already exists and is not empty; pass --force to replace the files "
                         "this conversion writes (nothing else in it is touched)")
    try:
        done = convert_to_directory(
            args.source, args.out, to=args.to, layout=args.layout, task_name=args.task_name,
            image_size=tuple(args.image_size) if args.image_size else None, num_heads=args.num_heads,
            encoder=args.encoder, rename=args.rename, entry=args.entry, strict=args.strict, force=args.force,
        )
    except ConversionError as exc:
        _print_report(exc.report, args.report)
        if args.report_json:
            write_json(args.report_json, {**exc.report.to_dict(), "to": args.to})
        raise InputError(f"{args.source} does not fit the model; nothing written (see the report above)") from None
    report = done.planned.report
    _print_report(report, args.report)
    if args.report_json:
        write_json(args.report_json, {**report.to_dict(), "config": done.planned.cfg.to_dict(), "to": args.to})
    print(f"wrote {done.out}: {', '.join(done.files)}")
    return 0
