"""Where a plan compiles: a TPU slice's devices (compile-only, from libtpu) or N fake CPU
devices, and the chip figures behind throughput, MFU and the fit check. A topology is
``GEN:AxB[xC]`` (chips per axis), ``GEN-N`` (a Cloud TPU accelerator type) or ``cpu:N``.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import re
from dataclasses import dataclass

from sonichu_jax.errors import ConfigError, InputError

GIB = 1024**3


@dataclass(frozen=True)
class Chip:
    """One TPU generation's published per-chip figures (cloud.google.com/tpu/docs/v4, /v5e,
    /v5p, /v6e); ``cores`` TensorCores per chip (one JAX device per chip either way)."""

    generation: str
    ndim: int  # torus dimensions of a slice
    cores: int
    hbm_bytes: int
    peak_flops: float  # bf16, per chip
    hbm_bandwidth: float  # bytes/s
    chip_config: str = "default"  # libtpu's name for one-device-per-chip (megacore)


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 3, 2, 32 * GIB, 275e12, 1200e9, chip_config="megacore"),
    "v5e": Chip("v5e", 2, 1, 16 * GIB, 197e12, 819e9),
    "v5p": Chip("v5p", 3, 2, 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("v6e", 2, 1, 32 * GIB, 918e12, 1640e9),
}
# Accepted spellings of a generation (Cloud TPU calls v5e slices "v5litepod").
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
MAX_CPU_DEVICES = 512
EXAMPLE = "v5p:4x4x4 (64 chips, 16 hosts), v5p-64 (32 chips), v5e:4x4, v4-32, v6e-16 or cpu:8"


@dataclass(frozen=True)
class Topology:
    name: str  # as normalised: "v5p:2x4x4" or "cpu:8"
    chip: Chip | None  # None for fake CPU devices: no HBM or peak to compare against
    devices: tuple
    hosts: int


def parse(text: str) -> tuple[str, tuple[int, ...]]:
    """``"v5p-64"`` / ``"v5p:2x4x4"`` / ``"cpu:8"`` -> (generation, shape in chips)."""
    text = text.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+?)(?::(\d+(?:x\d+)*)|-(\d+))", text)
    if not m:
        raise InputError(f"topology {text!r} is not GEN:AxBxC or GEN-N; examples: {EXAMPLE}")
    gen, dims, count = m.group(1), m.group(2), m.group(3)
    gen = ALIASES.get(gen, gen)
    if gen == "cpu":  # XLA aborts (and then hangs) on many thousands of fake devices
        if dims is None or "x" in dims or not 1 <= int(dims) <= MAX_CPU_DEVICES:
            raise InputError(f"fake CPU devices are written cpu:N with 1 <= N <= {MAX_CPU_DEVICES}, got {text!r}")
        return gen, (int(dims),)
    if gen not in CHIPS:
        raise InputError(f"unknown TPU generation {gen!r} in {text!r}; known: {', '.join(CHIPS)}, cpu; "
                         f"examples: {EXAMPLE}")
    chip = CHIPS[gen]
    if dims is not None:
        shape = tuple(int(d) for d in dims.split("x"))
        if len(shape) != chip.ndim or min(shape) < 1:
            raise InputError(f"{gen} slices have {chip.ndim} axes, got {text!r}; examples: {EXAMPLE}")
        return gen, shape
    return gen, slice_shape(chip, int(count), text)


def slice_shape(chip: Chip, count: int, text: str) -> tuple[int, ...]:
    """The default shape of a Cloud TPU accelerator type of ``count`` cores (v4, v5p) or
    chips (v5e, v6e): powers of two grown one axis at a time (2x2x2, 2x2x4, 2x4x4,
    4x4x4, ...; 2x2, 2x4, 4x4, 4x8, ...), as Cloud TPU's tables list them."""
    chips = count // chip.cores
    if count % chip.cores or chips < 1 or chips & (chips - 1):
        raise InputError(f"{text!r}: only power-of-two slices are named here; give other shapes as "
                         f"{chip.generation}:AxB{'xC' if chip.ndim == 3 else ''}")
    if chips == 1:
        return (1,) * chip.ndim
    shape = [2, 2] + [1] * (chip.ndim - 2)
    if chip.ndim == 3 and chips >= 8:
        shape = [2, 2, 2]
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def host_bounds(chip: Chip, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Chips per host: a 2x2x1 block (four chips) on every multi-host slice; a 2-D slice
    of up to eight chips is one host."""
    if chip.ndim == 2 and math.prod(shape) <= 8:
        return (shape[0], shape[1], 1)
    return (min(2, shape[0]), min(2, shape[1]), 1)


def tpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def tpu_chips_here() -> bool:
    """Whether this machine has TPU chips (v4 and v5e expose /dev/accel*, v5p and v6e VFIO groups)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def accelerator_type(chip: Chip, shape: tuple[int, ...]) -> str:
    """Cloud TPU's name of a slice of ``shape`` chips: ``v5p-16``, ``v5litepod-4``."""
    cores = math.prod(shape) * chip.cores
    return f"{'v5litepod' if chip.generation == 'v5e' else chip.generation}-{cores}"


def make_topology(text: str) -> Topology:
    gen, shape = parse(text)
    if gen == "cpu":
        return Topology(f"cpu:{shape[0]}", None, tuple(cpu_devices(shape[0])), 1)
    if not tpu_available():
        raise InputError(f"topology {text!r} needs libtpu (compile-only, no TPU needed): "
                         "pip install 'sonichu-jax[tpu]'")
    chip = CHIPS[gen]
    name = f"{gen}:{'x'.join(map(str, shape))}"
    # libtpu holds a lock file per process that would refuse a second process on the
    # machine (a test worker, a training job); compiling needs no exclusive chip access.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not tpu_chips_here():
        # Off a TPU VM libtpu asks the (absent) metadata server for the host's slice and
        # prints half a screen of errors; these answers stand in for it. They do not
        # shape the topology, which the call below spells out.
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(chip, shape))
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=name, chip_config_name=chip.chip_config,
            chips_per_host_bounds=host_bounds(chip, shape), num_slices=1,
        )
    except Exception as exc:  # libtpu reports a bad shape as a runtime error
        raise InputError(f"libtpu refuses topology {name}: {str(exc).splitlines()[0]}") from None
    devices = tuple(desc.devices)
    return Topology(name, chip, devices, len({d.process_index for d in devices}))


class NeedsFreshProcess(ConfigError):
    """The process already started JAX with fewer CPU devices than asked for."""


def cpu_devices(n: int) -> list:
    """``n`` CPU devices (the count can only be raised before JAX's first computation)."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices))
    except RuntimeError:
        pass  # backends already started: use what they have
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise NeedsFreshProcess(f"this process started JAX with {len(devices)} CPU devices, fewer than {n}")
    return devices[:n]
