"""`sonichu-jax pretrain`: I-JEPA self-supervised pretraining on a folder of frames."""

from __future__ import annotations

import argparse

from sonichu_jax.commands.run_options import add_run_arguments, load_run_config, run_stage

HELP = "I-JEPA pretraining of the encoder on unlabelled frames; exports a backbone for train-teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="config file, e.g. configs/ijepa_vitb.py")
    parser.add_argument("--frames", metavar="DIR",
                        help="folder of image files, searched recursively (default: data.source)")
    add_run_arguments(parser)
    parser.epilog = ("Continue from a published I-JEPA checkpoint (the official jepa-latest.pth.tar or a directory "
                     "written by convert): --set init.path=FILE; init.parts and init.missing_predictor choose the "
                     "networks. Unreadable frames are replaced and counted up to data.max_bad_fraction. See "
                     "docs/ijepa.md.")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.train.ijepa_config import IJEPAConfig
    from sonichu_jax.train.pretrain import BACKBONE_DIR, pretrain

    config = load_run_config(args, IJEPAConfig)
    result = run_stage(lambda: pretrain(config, args.frames, args.out, resume=args.resume), args.out)
    if result.finished:
        metrics = result.last_metrics or {}
        print(f"done: {result.step} steps, loss {metrics.get('loss', float('nan')):.4f}, target std "
              f"{metrics.get('target_std', float('nan')):.3f}; backbone: {result.out_dir}/{BACKBONE_DIR}")
    return result.exit_code
