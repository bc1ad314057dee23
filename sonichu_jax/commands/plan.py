"""`sonichu-jax plan`: will this config compile on that slice, fit in HBM, and how long
will it take? The training step compiled ahead of time, from abstract inputs only."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HELP = "compile a run's training step for a TPU slice (or N fake CPU devices) without hardware: HBM, step time, MFU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="training config (I-JEPA, teacher or distillation), e.g. configs/ijepa_vitb.py")
    parser.add_argument("--topology", action="append", required=True, metavar="TOPO",
                        help="v5p:4x4x4 (chips per axis), v5p-64 (Cloud TPU accelerator type), v5e:4x4, v4-32, "
                             "v6e-16, or cpu:N fake CPU devices; repeat for several (one column each)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="override a config field, e.g. --set data.batch_size=4096 (repeatable)")
    parser.add_argument("--teachers", type=int, default=5, metavar="N",
                        help="number of frozen teachers of a distillation config (default 5, the card's)")
    parser.add_argument("--examples", type=int, metavar="N",
                        help="training examples (frames for I-JEPA) a schedule in epochs is counted over "
                             "(default: the card's training set: 160,486 frames, 32,722 samples)")
    parser.add_argument("--json", metavar="FILE", help="write the plans as JSON")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print where the estimated step time goes (cycles by kind and source op)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _cpu_count(topologies: list[str]) -> int:
    """The fake CPU devices the topologies need; each topology checked before JAX starts."""
    from sonichu_jax.train.plans.topology import parse

    return max((shape[0] for gen, shape in map(parse, topologies) if gen == "cpu"), default=0)


def _start_jax_for_plans(cpu_devices: int) -> None:
    """CPU backend only (a plan must not lock this machine's chips), with enough devices."""
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
        if cpu_devices:
            jax.config.update("jax_num_cpu_devices", cpu_devices)
    except RuntimeError:
        pass  # JAX already running in this process (an API caller): see NeedsFreshProcess


def _rerun_in_fresh_process(args: argparse.Namespace, cpu_devices: int) -> int:
    argv = [sys.executable, "-m", "sonichu_jax", "plan", "--config", args.config, "--teachers", str(args.teachers)]
    for t in args.topology:
        argv += ["--topology", t]
    for o in args.overrides:
        argv += ["--set", o]
    argv += (["--examples", str(args.examples)] if args.examples is not None else [])
    argv += (["--json", args.json] if args.json else []) + (["--quiet"] if args.quiet else [])
    argv += ["--breakdown"] if args.breakdown else []
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(cpu_devices))
    return subprocess.call(argv, env=env)


def _schedule_note(config, plan) -> str:
    """How a schedule in epochs became the plan's steps, and over which training set."""
    from sonichu_jax.train.configlib import get_path
    from sonichu_jax.train.schedule import epoch_fields

    given = ", ".join(f"{key}={get_path(config, key):g}" for key in epoch_fields(config))
    whose = "the card's training set; --examples N for yours" if plan.examples_assumed else "--examples"
    return (f"steps: {plan.steps:,} from {given} over {plan.examples:,} training examples ({whose}) at a "
            f"global batch of {plan.global_batch:,}")


def run(args: argparse.Namespace) -> int:
    from sonichu_jax.errors import InputError
    from sonichu_jax.fileio import check_output, write_json
    from sonichu_jax.train.configlib import apply_overrides, load_config_file, to_dict

    if args.teachers < 1:
        raise InputError(f"--teachers must be >= 1, got {args.teachers}")
    if args.examples is not None and args.examples < 1:
        raise InputError(f"--examples must be >= 1, got {args.examples}")
    if args.json:
        check_output(args.json, (".json",), inputs=[args.config])
    config = apply_overrides(load_config_file(args.config), args.overrides)
    if hasattr(config, "validate"):
        config = config.validate()
    cpu_devices = _cpu_count(args.topology)
    _start_jax_for_plans(cpu_devices)

    from tqdm import tqdm

    from sonichu_jax.train.plans import DoesNotFit, NeedsFreshProcess, make_plan, make_topology
    from sonichu_jax.train.plans.table import render, versions

    try:
        topologies = [make_topology(t) for t in args.topology]
    except NeedsFreshProcess:
        return _rerun_in_fresh_process(args, cpu_devices)
    plans, refused = [], []
    with tqdm(topologies, desc="compiling", unit="topology", disable=args.quiet) as bar:
        for topology in bar:
            bar.set_postfix_str(topology.name)
            try:
                plans.append(make_plan(config, topology, args.teachers, args.examples))
            except DoesNotFit as exc:  # the other topologies still get their plans
                refused.append(str(exc))
    if plans:
        print(render(plans))
        if plans[0].examples is not None:
            print(_schedule_note(config, plans[0]))
    if args.breakdown:
        from sonichu_jax.train.plans.breakdown import render as render_breakdown

        for plan in plans:
            print(f"\n{plan.topology}: {render_breakdown(plan.breakdown)}")
    if args.json and plans:
        write_json(args.json, {"config": os.path.abspath(args.config) if os.path.isfile(args.config) else args.config,
                               "overrides": list(args.overrides), "versions": versions(),
                               "settings": to_dict(config), "plans": [p.to_dict() for p in plans]})
        print(f"wrote {args.json}", file=sys.stderr)
    refused += [f"{p.stage} on {p.topology} needs {p.memory['total'] / 2**30:.1f} GiB of HBM per chip, "
                f"the chip has {p.hbm_bytes / 2**30:.0f} GiB" for p in plans if not p.fits]
    for message in refused:
        print(f"sonichu-jax plan: error: {message}", file=sys.stderr)
    return 2 if refused else 0
