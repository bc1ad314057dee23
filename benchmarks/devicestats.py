"""What every benchmark reports about the device: its name, its dense bf16 peak (for MFU)
and the peak memory the process has used on it."""

from __future__ import annotations

# Dense bf16 matrix rate per chip, TFLOP/s, from the vendors' datasheets. The H200 has the
# H100's arithmetic (one Hopper die); only its memory differs.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def device_kind() -> str:
    import jax

    device = jax.devices()[0]
    return getattr(device, "device_kind", device.platform)


def peak_tflops(override: float | None = None) -> float | None:
    """``override`` when given, else the datasheet figure of a known GPU, else None."""
    if override:
        return override
    kind = device_kind()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def peak_memory_gib() -> float | None:
    """The most device memory this process has held (GPU and TPU report it; CPU does not)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / (1 << 30)
