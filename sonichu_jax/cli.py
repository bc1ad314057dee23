"""The `sonichu-jax` console script: the composition root of the project.

Each subcommand lives in its own module under `sonichu_jax.commands` exposing ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules import
JAX and anything heavy inside ``run`` only, so ``--help`` stays instant. This is the one
place allowed to reach into `sonichu_jax.train`, and only from a subcommand's ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from sonichu_jax import __version__
from sonichu_jax.errors import SonichuError
from sonichu_jax.fileio import os_reason

# Subcommands, in --help order; "make-synthetic" lives in sonichu_jax.commands.make_synthetic.
COMMANDS = ("predict", "embed", "convert", "inspect", "parity", "make-synthetic", "pack", "evaluate", "report",
            "train-teacher", "pseudo-label", "distill", "pretrain", "demo", "plan")

# Exit codes: 0 done; 1 a run that failed (diverged, an OS error) or a parity check that failed;
# 2 bad input (any SonichuError); 128 + signal number for a training run stopped by
# SIGINT / SIGTERM after saving its checkpoint (the shell's convention: 130, 143).

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonichu-jax",
        description="SONICHU-124M in JAX: ultrasound keypoint models, their conversion, "
        "training and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"sonichu_jax.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread: Python's default action ends the process
    without unwinding, which would leave temporary files and folders behind. Training
    commands install their own handler (save, then stop) while they run."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Python lets only the main thread install handlers (main() may run in another one).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args._run(args) or 0)
    except SonichuError as exc:
        print(f"sonichu-jax {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk, a read-only folder: the run failed, the input may be fine
        print(f"sonichu-jax {args.command}: error: {os_reason(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sonichu-jax {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print(f"sonichu-jax {args.command}: terminated; nothing half-written was kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
