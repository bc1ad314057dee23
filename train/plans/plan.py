"""Compile a run's training step ahead of time for a topology and read the compiler's
estimates (not measurements): per-chip memory, FLOPs, step time, img/s, MFU.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import jax

from sonichu_jax.errors import ConfigError, SonichuError
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.plans.breakdown import breakdown
from sonichu_jax.train.plans.stages import StageProgram, stage_program
from sonichu_jax.train.plans.topology import Topology

MEMORY_PARTS = ("parameters", "optimiser", "other_state", "teachers", "batch", "temporaries", "program")


class DoesNotFit(SonichuError):
    """The compiler could not fit the step in the chip's HBM (its figures in the message)."""


@dataclass
class Plan:
    stage: str
    topology: str
    device_kind: str
    devices: int
    hosts: int
    mesh: dict  # axis -> size
    global_batch: int
    batch_per_chip: float
    steps: int  # the run's, in steps (a schedule in epochs counted over ``examples``)
    examples: int | None = None  # training set size a schedule in epochs was counted over; None: in steps
    examples_assumed: bool = False  # ``examples`` is the card's training set (the stage's card_examples), not the user's
    memory: dict = field(default_factory=dict)  # MEMORY_PARTS + total, bytes per chip
    hbm_bytes: int | None = None
    fits: bool = True
    compiler_flops: float = 0.0  # per chip per step, the compiled program's count (Pallas kernels' included)
    model_flops: float = 0.0  # per chip per step, from the architecture
    bytes_accessed: float = 0.0  # per chip per step (Pallas kernels' included)
    kernel_flops: float = 0.0  # per chip per step, of the Pallas kernels (breakdown.pallas_kernels)
    kernel_bytes: float = 0.0
    kernel_seconds: float = 0.0  # their roofline, part of step_seconds
    step_seconds: float | None = None  # estimate; None where there is no model of the chip (CPU)
    time_source: str | None = None  # "cost model" (the compiler's) or "roofline" (see estimate)
    img_per_s: float | None = None
    mfu: float | None = None  # model FLOPs / (step time x peak bf16 FLOP/s)
    run_hours: float | None = None
    chip_hours: float | None = None
    compile_seconds: float = 0.0
    breakdown: dict = field(default_factory=dict)  # see breakdown.py

    def to_dict(self) -> dict:
        return asdict(self)


def build_mesh(config, topology: Topology) -> jax.sharding.Mesh:
    """The run's (data, fsdp) mesh over the topology's devices, the batch checked against it."""
    try:
        mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, devices=list(topology.devices))
        mesh_lib.check_batch(config.data.batch_size, mesh)
    except ConfigError as exc:
        raise ConfigError(f"on {topology.name}: {exc}") from None
    return mesh


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def memory_parts(program: StageProgram, stats) -> dict:
    """Per-chip bytes by part; ``total`` is the compiled program's peak: arguments +
    outputs not aliased to a donated argument + temporaries + code."""
    state = program.run.state
    parts = {
        "parameters": _shard_bytes(state.params),
        "optimiser": _shard_bytes(state.opt_state),
        "other_state": _shard_bytes(state) - _shard_bytes(state.params) - _shard_bytes(state.opt_state),
        "teachers": _shard_bytes(program.run.aux),
        "batch": _shard_bytes(program.run.batch),
        "temporaries": int(stats.temp_size_in_bytes),
        "program": int(stats.generated_code_size_in_bytes),
    }
    parts["total"] = int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                         + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes)
    return parts


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost or {}


def make_plan(config, topology: Topology, num_teachers: int = 5, examples: int | None = None) -> Plan:
    """Compile the step of ``config``'s stage over ``topology`` (abstract inputs only); a
    schedule in epochs counts over ``examples``, else the card's (`Stage.card_examples`)."""
    program = stage_program(config, build_mesh(config, topology), num_teachers, examples)
    start = time.perf_counter()
    n = len(topology.devices)
    try:
        compiled = program.run.lower().compile()
    except jax.errors.JaxRuntimeError as exc:
        first = str(exc).splitlines()[0]
        if not first.startswith("RESOURCE_EXHAUSTED"):
            raise
        raise DoesNotFit(f"{program.stage} on {topology.name} ({config.data.batch_size // n} images per chip) does "
                         f"not fit: {first.removeprefix('RESOURCE_EXHAUSTED: ')}") from None
    elapsed = time.perf_counter() - start
    cost = _cost(compiled)
    hlo = breakdown(compiled.as_text())
    kernels = hlo["kernels"]
    plan = Plan(
        stage=program.stage, topology=topology.name, device_kind=topology.devices[0].device_kind,
        devices=n, hosts=topology.hosts, mesh=dict(program.run.mesh.shape), global_batch=config.data.batch_size,
        batch_per_chip=config.data.batch_size / n, steps=program.run.config.steps,
        examples=program.examples, examples_assumed=program.examples_assumed,
        memory=memory_parts(program, compiled.memory_analysis()),
        compiler_flops=float(cost.get("flops", 0.0)) + kernels["flops"], model_flops=program.model_flops / n,
        bytes_accessed=float(cost.get("bytes accessed", 0.0)) + kernels["bytes"], kernel_flops=kernels["flops"],
        kernel_bytes=kernels["bytes"], compile_seconds=elapsed, breakdown=hlo,
    )
    return estimate(plan, topology, cost.get("optimal_seconds"))


def estimate(plan: Plan, topology: Topology, step_seconds: float | None) -> Plan:
    """Fit check against the chip's HBM and the figures that follow from the step time: the
    cost model's (``optimal_seconds``) plus the Pallas kernels' roofline, or where it gives
    none the roofline sum (docs/scaling.md); none for CPU devices."""
    chip = topology.chip
    if chip is None:
        return plan
    plan.hbm_bytes = chip.hbm_bytes
    plan.fits = plan.memory["total"] <= chip.hbm_bytes
    plan.kernel_seconds = plan.kernel_flops / chip.peak_flops + plan.kernel_bytes / chip.hbm_bandwidth
    if step_seconds is not None and step_seconds > 0:
        plan.time_source = "cost model"
        step_seconds += plan.kernel_seconds
    elif plan.compiler_flops > 0:
        plan.time_source = "roofline"
        step_seconds = plan.compiler_flops / chip.peak_flops + plan.bytes_accessed / chip.hbm_bandwidth
    else:
        return plan
    plan.step_seconds = float(step_seconds)
    plan.img_per_s = plan.global_batch / plan.step_seconds
    plan.run_hours = plan.steps * plan.step_seconds / 3600.0
    plan.chip_hours = plan.run_hours * plan.devices
    plan.mfu = plan.model_flops / (plan.step_seconds * chip.peak_flops)
    return plan
