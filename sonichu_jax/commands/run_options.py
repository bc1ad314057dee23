"""What the three training commands (train-teacher, distill, pretrain) share: the run
options, the config they build from them, and the closing line (exit codes:
docs/training.md, "Stopping, divergence and exit codes")."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every training run shares (train-teacher, distill, pretrain)."""
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory (checkpoints, metrics, exports); a gs:// path is passed to orbax as is")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest intact checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)")
    group = parser.add_argument_group("several processes (a TPU pod slice, a GPU cluster)")
    group.add_argument("--distributed", choices=("auto", "off"),
                       help="auto (default): join the run when JAX recognises the cluster (Cloud TPU, Slurm, "
                            "Open MPI, Kubernetes) or JAX_COORDINATOR_ADDRESS is set; off: one process")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="explicit start: process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="explicit start: the number of processes")
    group.add_argument("--process-id", type=int, metavar="I", help="explicit start: this process's index")


def load_run_config(args: argparse.Namespace, kind: type):
    """The config file with ``--set`` and the distributed options applied (options last)."""
    from sonichu_jax.errors import ConfigError
    from sonichu_jax.train.configlib import apply_overrides, load_config_file

    config = load_config_file(args.config)
    if not isinstance(config, kind):
        raise ConfigError(f"{args.config} returns a {type(config).__name__}, not a {kind.__name__}")
    flags = {"mode": args.distributed, "coordinator": args.coordinator, "num_processes": args.num_processes,
             "process_id": args.process_id}
    distributed = [f"distributed.{k}={v}" for k, v in flags.items() if v is not None]
    return apply_overrides(config, list(args.overrides) + distributed)


def run_stage(call, out: str):
    """``call()``; an OS error (a full disk, a read-only folder) also names the run's last
    intact checkpoint, from which ``--resume`` continues."""
    try:
        return call()
    except OSError as exc:
        from sonichu_jax.train.run_dir import RunDir

        step = RunDir(out).last_checkpoint()
        last = "none" if step is None else f"step {step} in {RunDir(out).join('checkpoints')}"
        raise OSError(exc.errno, f"{exc.strerror or exc}; last intact checkpoint: {last}", exc.filename) from None


def report(result, what: str = "validation MRE") -> int:
    """The closing line of a supervised run, and the exit code."""
    if result.finished and result.validation is not None:
        best = f" (best checkpoint: step {result.best_step})" if result.best_step is not None else ""
        print(f"step {result.validation_step}: {what} {result.val_mre:.2f} px{best}")
    return result.exit_code
