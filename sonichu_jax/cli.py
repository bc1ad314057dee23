"""The `sonichu-jax` console script: the composition root of the project.

Each subcommand lives in its own module under `sonichu_jax.commands` exposing ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules import
JAX and anything heavy inside ``run`` only, so ``--help`` stays instant. This is the one
place allowed to reach into `sonichu_jax.train`, and only from a subcommand's ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sonichu_jax import __version__
from sonichu_jax.errors import SonichuError

# subcommand name -> module under sonichu_jax.commands
COMMANDS: dict[str, str] = {
    "predict": "predict",
    "convert": "convert",
    "parity": "parity",
    "make-synthetic": "make_synthetic",
    "evaluate": "evaluate",
    "train-teacher": "train_teacher",
    "pseudo-label": "pseudo_label",
    "distill": "distill",
    "pretrain": "pretrain",
    "demo": "demo",
    "plan": "plan",
}

# Exit codes: 0 done; 1 a run that failed (diverged) or a parity check that failed;
# 2 bad input (any SonichuError); 128 + signal number for a training run stopped by
# SIGINT / SIGTERM after saving its checkpoint (the shell's convention: 130, 143).

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonichu-jax",
        description="SONICHU-124M in JAX: ultrasound keypoint models, their conversion, "
        "training and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"sonichu_jax.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SonichuError as exc:
        print(f"sonichu-jax {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"sonichu-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
