"""`sonichu-jax convert`: a checkpoint of any supported layout -> a Flax checkpoint
directory (or a PyTorch one, for export), with a report of what happened to every tensor.

Output (``--to flax``, the default): ``flax_model.safetensors`` (tensors named by Flax
state path) + ``config.json`` + ``preprocessor_config.json``; an I-JEPA predictor goes to
``flax_predictor.safetensors`` + ``predictor_config.json``. Tensors stream one at a time
from the source into the output file. Everything is written into a temporary directory
that is renamed onto ``--out`` only when the conversion succeeded.
"""

from __future__ import annotations

import argparse
import os

HELP = "convert a ViT / ViTPose / I-JEPA / Sonichu checkpoint to Flax (or export it to PyTorch layouts)"

TARGETS = ("flax", "sonichu", "hf-vitpose")
PREDICTOR_WEIGHTS = "flax_predictor.safetensors"
PREDICTOR_CONFIG = "predictor_config.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="checkpoint file (.safetensors, .pth, .pth.tar) or a "
                        "directory holding model.safetensors (+ config.json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless --force)")
    parser.add_argument("--layout", help="source layout (default: detected from the tensor names): "
                        "sonichu, vitpose, hf-vitpose, timm-vit, ijepa, flax")
    parser.add_argument("--to", choices=TARGETS, default="flax", help="output layout (default flax)")
    parser.add_argument("--task-name", default="keypoints", help="task name for a one-head checkpoint (default keypoints)")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="model input size; a learned position table of another grid is resized bicubically")
    parser.add_argument("--num-heads", type=int, help="attention heads, when the checkpoint has no config "
                        "(default width // 64)")
    parser.add_argument("--encoder", choices=("target_encoder", "encoder"), default="target_encoder",
                        help="I-JEPA: which encoder becomes the backbone (default target_encoder)")
    parser.add_argument("--report", action="store_true", help="also list every mapped tensor")
    parser.add_argument("--report-json", metavar="FILE", help="write the full report as JSON (also on failure)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out directory")


def _locate(source: str) -> tuple[str, str]:
    """(directory whose config.json describes the weights, weights file)."""
    from sonichu_jax.checkpoint import FLAX_WEIGHTS_NAME, TORCH_WEIGHTS_NAME
    from sonichu_jax.errors import InputError

    if os.path.isdir(source):
        for name in (TORCH_WEIGHTS_NAME, FLAX_WEIGHTS_NAME):
            if os.path.isfile(os.path.join(source, name)):
                return source, os.path.join(source, name)
        raise InputError(f"{source} holds neither {TORCH_WEIGHTS_NAME} nor {FLAX_WEIGHTS_NAME}")
    if not os.path.isfile(source):
        raise InputError(f"checkpoint not found: {source}")
    return os.path.dirname(os.path.abspath(source)), source


def _check_out(out: str, force: bool) -> None:
    from sonichu_jax.errors import InputError

    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)) and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")


def _print_report(report, inferred, listing: bool) -> None:
    print(report.summary())
    for note in inferred.notes:
        print(f"  config: {note}")
    if listing:
        print(report.listing())


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import tempfile

    from sonichu_jax import checkpoint
    from sonichu_jax.convert import Options, detect_layout, infer_config, open_source, plan_conversion, run_plan
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import write_json
    from sonichu_jax.preprocess import SonichuPreprocessor

    out = os.path.abspath(args.out)
    _check_out(out, args.force)
    config_dir, weights = _locate(args.source)
    source = open_source(weights)
    layout = detect_layout(source.keys(), args.layout)
    hints = checkpoint.read_hints(config_dir)
    if args.num_heads:
        hints["num_heads"] = args.num_heads
    inferred = infer_config(source, layout, hints, args.task_name, Options(encoder=args.encoder))
    cfg = inferred.cfg
    if args.image_size:
        cfg = cfg.replace(image_size=tuple(args.image_size))
    options = Options(source_grid=inferred.source_grid, encoder=args.encoder)
    expected = checkpoint.expected_shapes(checkpoint.abstract_model(cfg))
    if inferred.predictor:
        expected.update(checkpoint.predictor_shapes(cfg, inferred.predictor["width"], inferred.predictor["depth"]))
    plan = plan_conversion(source.keys(), layout, cfg, expected, checkpoint.state_defaults(cfg), options=options)
    report = plan.report
    if report.ok and args.to != "flax" and report.not_provided:
        raise InputError(f"--to {args.to} needs a whole model; this {layout.name} checkpoint has no "
                         f"{len(report.not_provided)} of its parameters (e.g. {report.not_provided[0]})")

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        if not report.ok:
            run_plan(plan, source, lambda target, array: None)  # still list every shape mismatch
        elif args.to == "flax":
            _write_flax(plan, source, tmp)
        else:
            arrays: dict = {}
            run_plan(plan, source, arrays.__setitem__)
            if report.ok:
                checkpoint.write_pytorch(arrays, cfg, tmp, args.to)
        if report.ok:
            if args.to == "flax":
                cfg.save(tmp)
                if inferred.predictor:
                    write_json(os.path.join(tmp, PREDICTOR_CONFIG), inferred.predictor)
            SonichuPreprocessor(size=cfg.image_size).save_pretrained(tmp)
        if args.report_json:
            write_json(args.report_json, {**report.to_dict(), "config_notes": inferred.notes,
                                          "config": cfg.to_dict(), "to": args.to})
        _print_report(report, inferred, args.report)
        if not report.ok:
            print(f"sonichu-jax convert: error: {weights} does not fit the model; nothing written", file=sys.stderr)
            return 2
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
        print(f"wrote {out}: {', '.join(sorted(os.listdir(out)))}")
        return 0
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def _write_flax(plan, source, directory: str) -> None:
    """Stream the converted tensors into flax_model.safetensors (and the predictor's file)."""
    import numpy as np

    from sonichu_jax.checkpoint import FLAX_WEIGHTS_NAME
    from sonichu_jax.convert import SafetensorsWriter, run_plan

    files = {
        FLAX_WEIGHTS_NAME: [t for t in plan.targets if not t.startswith("predictor/")],
        PREDICTOR_WEIGHTS: [t for t in plan.targets if t.startswith("predictor/")],
    }
    writers = {
        name: SafetensorsWriter(os.path.join(directory, name), {t: (plan.expected[t], np.float32) for t in targets},
                                {"format": "flax", "layout": "flax"})
        for name, targets in files.items()
        if targets
    }
    by_target = {t: writers[name] for name, targets in files.items() for t in targets}
    try:
        run_plan(plan, source, lambda target, array: by_target[target].write(target, array))
    finally:
        for writer in writers.values():
            writer.close(complete=plan.report.ok)
