"""`sonichu-jax pretrain`: I-JEPA self-supervised pretraining on a folder of frames."""

from __future__ import annotations

import argparse
import sys

HELP = "I-JEPA pretraining of the encoder on unlabelled frames; exports a backbone for train-teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="config file, e.g. configs/ijepa_vitb.py")
    parser.add_argument("--frames", required=True, metavar="DIR", help="folder of image files (searched recursively)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory: checkpoints, metrics.jsonl, backbone/ and backbone_pytorch/")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=5e-4 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.errors import ConfigError
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.ijepa_config import IJEPAConfig
    from sonichu_jax.train.ijepa_loop import BACKBONE_DIR, pretrain
    from sonichu_jax.errors import TrainingDiverged

    config = load_config_file(args.config)
    if not isinstance(config, IJEPAConfig):
        raise ConfigError(f"{args.config} returns a {type(config).__name__}, not an IJEPAConfig")
    config = apply_overrides(config, args.set)
    try:
        result = pretrain(config, args.frames, args.out, resume=args.resume)
    except TrainingDiverged as exc:
        print(f"sonichu-jax pretrain: {exc}", file=sys.stderr)
        return 1
    if result.interrupted:
        return 1
    metrics = result.last_metrics or {}
    print(f"done: {result.step} steps, loss {metrics.get('loss', float('nan')):.4f}, "
          f"target std {metrics.get('target_std', float('nan')):.3f}; backbone: {result.out_dir}/{BACKBONE_DIR}")
    return 0
