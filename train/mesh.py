"""Device mesh, shardings and global batch assembly (multi-process start-up:
`sonichu_jax.train.distributed`).

The mesh has two axes: ``data`` (batch only) and ``fsdp`` (batch *and* parameters). The
batch is split over both; a parameter is split over ``fsdp`` along its largest divisible
dimension, so fsdp=1 means plain data parallelism with replicated parameters.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sonichu_jax.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp) mesh over ``devices`` (default: every device of every process)."""
    n = jax.device_count() if devices is None else len(devices)
    if fsdp < 1 or n % fsdp:
        raise ConfigError(f"mesh.fsdp={fsdp} must divide the device count {n}")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ConfigError(f"mesh.data={data} x mesh.fsdp={fsdp} does not use all {n} devices")
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


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying shardings (of arrays or of ShapeDtypeStructs): inputs an
    ahead-of-time lowering accepts, and the target orbax restores into."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
    """The global batch splits evenly over every device of ``mesh`` (any mesh, also one
    over devices this process cannot address, as an ahead-of-time plan builds)."""
    if global_batch % mesh.size:
        raise ConfigError(
            f"data.batch_size={global_batch} (the global batch) must be a multiple of the mesh's {mesh.size} "
            f"devices (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )


def local_batch_size(global_batch: int) -> int:
    """This process's share of ``global_batch``, which must split evenly over the
    processes and their local devices (`ConfigError` otherwise)."""
    processes, local = jax.process_count(), jax.local_device_count()
    if global_batch % (processes * local):
        raise ConfigError(
            f"data.batch_size={global_batch} (the global batch) must be a multiple of the {processes * local} "
            f"devices ({processes} processes x {local} local devices)"
        )
    return global_batch // processes


def global_batch(mesh: jax.sharding.Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assemble each process's slice of the batch into global arrays sharded over the mesh.

    Every process passes its own rows (in process order they form the global batch).
    uint8 training images (`sonichu_jax.data.pipeline.to_wire`) are normalised on the devices."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, value in local.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    if "image" in out and out["image"].dtype == np.uint8:
        out["image"] = _device_normalize(out["image"])
    return out


@jax.jit
def _device_normalize(images: jax.Array) -> jax.Array:
    from sonichu_jax.data.pipeline import device_normalize

    return device_normalize(images)
