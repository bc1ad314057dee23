"""Starting a multi-process run JAX's standard way (``distributed.mode=auto``: JAX's
cluster detection; an explicit coordinator; ``off``), before anything touches a device,
and the banner line that says what a run is on (docs/training.md, "Several processes").
"""

from __future__ import annotations

import os

import jax

from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import DistributedConfig

# The ValueError jax.distributed.initialize() raises when it was given no coordinator and
# recognised no cluster: for mode=auto that means "one process", not a failure.
_NOTHING_DETECTED = "coordinator_address"


def start(config: DistributedConfig) -> bool:
    """Join the multi-process run ``config`` describes; returns whether JAX's distributed
    client is up afterwards."""
    if jax.distributed.is_initialized():
        return True
    if config.mode == "off":
        return False
    # Only the CPU client reads it (gloo collectives between CPU processes); GPUs and TPUs
    # keep their own (NCCL, ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if config.coordinator:
        jax.distributed.initialize(coordinator_address=config.coordinator, num_processes=config.num_processes,
                                   process_id=config.process_id)
        return True
    try:
        jax.distributed.initialize()
    except ValueError as exc:
        if _NOTHING_DETECTED in str(exc) and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            return False
        raise ConfigError(f"JAX's distributed start failed: {exc}") from None
    except RuntimeError:
        # JAX is already running in this process (a library call after other JAX work):
        # it can no longer join a multi-process run, and stays one process.
        return False
    return True


def banner(name: str, mesh: jax.sharding.Mesh, global_batch: int, steps: int, per_epoch: int | None) -> str:
    """One line: backend, device kind, devices, processes, mesh, batch, schedule."""
    processes, devices = jax.process_count(), jax.device_count()
    epoch = f", {per_epoch} steps per epoch" if per_epoch else ""
    return (f"{name}: {jax.default_backend()} ({jax.devices()[0].device_kind}), {devices} device"
            f"{'s' if devices > 1 else ''}, {processes} process{'es' if processes > 1 else ''}, mesh data={mesh.shape['data']} x "
            f"fsdp={mesh.shape['fsdp']}, batch {global_batch} global / {global_batch // processes} per host, "
            f"{steps} steps{epoch}")


def shared_storage_note(out_dir: str) -> str | None:
    """With several processes every host writes the checkpoints collectively, so the run
    directory must be one they all see; a local path may or may not be (a mount)."""
    if jax.process_count() == 1 or "://" in str(out_dir):  # gs:// and the like: shared
        return None
    return (f"note: {jax.process_count()} processes write to {out_dir}, a local path: it must be storage "
            f"every host shares (a network file system, or a gs:// path)")
