"""Device mesh, shardings, multi-process start-up and global batch assembly.

The mesh has two axes: ``data`` (batch only) and ``fsdp`` (batch *and* parameters). The
batch is split over both; a parameter is split over ``fsdp`` along its largest divisible
dimension, so fsdp=1 means plain data parallelism with replicated parameters.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")

# Environment variables a launcher sets for multi-process runs (one process per host).
_COORDINATOR = "SONICHU_COORDINATOR"  # host:port of process 0
_NUM_PROCESSES = "SONICHU_NUM_PROCESSES"
_PROCESS_ID = "SONICHU_PROCESS_ID"


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run when the launcher asked for one.

    Explicit variables (``SONICHU_COORDINATOR``, ``SONICHU_NUM_PROCESSES``,
    ``SONICHU_PROCESS_ID``) start the JAX coordinator on CPU, GPU or TPU alike; CPU
    processes then use gloo for cross-process collectives. Returns whether it initialised.
    """
    if _COORDINATOR not in os.environ or jax.distributed.is_initialized():
        return False
    # Only the CPU client uses it; accelerators keep their own collectives (NCCL, ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[_COORDINATOR],
        num_processes=int(os.environ[_NUM_PROCESSES]),
        process_id=int(os.environ[_PROCESS_ID]),
    )
    return True


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp) mesh over ``devices`` (default: every device of every process)."""
    n = jax.device_count() if devices is None else len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the device count {n}")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use all {n} devices")
    return jax.make_mesh(
        (data, fsdp), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
    )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_sharding(mesh: jax.sharding.Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """FSDP rule: split the largest dimension that the fsdp axis divides; scalars, small
    and indivisible arrays stay replicated."""
    size = mesh.shape["fsdp"]
    if size == 1 or not shape:
        return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % size == 0 and shape[dim] >= size:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def state_shardings(mesh: jax.sharding.Mesh, abstract_tree):
    """Shardings for a pytree of ShapeDtypeStructs (from ``jax.eval_shape``)."""
    return jax.tree.map(lambda x: param_sharding(mesh, tuple(x.shape)), abstract_tree)


def local_batch_size(global_batch: int) -> int:
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by {n} processes")
    per_host = global_batch // n
    if per_host % jax.local_device_count():
        raise ValueError(
            f"per-process batch {per_host} is not divisible by {jax.local_device_count()} local devices"
        )
    return per_host


def global_batch(mesh: jax.sharding.Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assemble each process's slice of the batch into global arrays sharded over the mesh.

    Every process passes its own rows (in process order they form the global batch)."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
