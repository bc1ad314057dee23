"""Device mesh (``data`` x ``fsdp``), shardings from the parameters' partition metadata,
and global batch assembly; fsdp=1 is plain data parallelism (docs/scaling.md).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
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


def fit(spec: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
    """``spec`` for ``shape`` on ``mesh``: an axis stays only where it splits the dimension."""
    def keep(axes, size):
        names = axes if isinstance(axes, tuple) else (axes,)
        devices = int(np.prod([mesh.shape[a] for a in names if a is not None]))
        return axes if devices > 1 and size % devices == 0 else None

    kept = [keep(axes, size) for axes, size in zip(spec, shape)]
    return P(*kept) if any(a is not None for a in kept) else P()


def state_shardings(mesh: jax.sharding.Mesh, tree, leading: int = 0):
    """Shardings of a pytree of ``nnx.Variable``s from their partition metadata, `fit` to
    ``mesh``; ``leading`` stacked axes stay whole; no metadata: replicated."""
    def one(x, spec):
        inner = fit(spec, tuple(x.shape[leading:]), mesh)
        return NamedSharding(mesh, P(*[None] * leading, *inner) if leading else inner)

    return jax.tree.map(one, tree, nnx.get_partition_spec(tree))


def jit_step(fn, mesh: jax.sharding.Mesh, shardings, aux_shardings: tuple = (), wrap=None,
             collective_matmul: bool = True):
    """``fn(state, batch, *aux) -> (state, metrics)`` jitted on ``mesh``: state donated,
    metrics replicated; ``wrap`` wraps ``fn`` first (tests count traces);
    ``collective_matmul`` as `MeshConfig` says."""
    return jax.jit(on_mesh(wrap(fn) if wrap is not None else fn, mesh), donate_argnums=0,
                   in_shardings=(shardings, batch_sharding(mesh), *aux_shardings),
                   out_shardings=(shardings, replicated(mesh)),
                   compiler_options=compiler_options(mesh, collective_matmul))


def compiler_options(mesh: jax.sharding.Mesh, collective_matmul: bool) -> dict | None:
    """The TPU compiler's switches for windowed einsums (other compilers have none)."""
    if collective_matmul or mesh.devices.flat[0].platform != "tpu":
        return None
    return {f"xla_tpu_enable_windowed_einsum_for_{kind}": False for kind in ("all_gather", "reduce_scatter")}


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying shardings: what a lowering takes and orbax restores into."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def on_mesh(fn, mesh: jax.sharding.Mesh):
    """``fn`` traced under ``mesh``'s abstract mesh, from which the model reads its target
    platform and batch axes (`nn.vit.target_platform`)."""
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
    """The global batch splits evenly over ``mesh``'s devices (also ones not addressable here)."""
    if global_batch % mesh.size:
        raise ConfigError(
            f"data.batch_size={global_batch} (the global batch) must be a multiple of the mesh's {mesh.size} "
            f"devices (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )


def local_batch_size(global_batch: int) -> int:
    """This process's share of ``global_batch``, which must split evenly over the devices."""
    processes, local = jax.process_count(), jax.local_device_count()
    if global_batch % (processes * local):
        raise ConfigError(
            f"data.batch_size={global_batch} (the global batch) must be a multiple of the {processes * local} "
            f"devices ({processes} processes x {local} local devices)"
        )
    return global_batch // processes


def global_batch(mesh: jax.sharding.Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Each process's rows (in process order) as global arrays sharded over the mesh;
    uint8 images (`sonichu_jax.data.pipeline.to_wire`) are normalised on the devices."""
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
