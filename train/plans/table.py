"""Plans as a text table: one column per topology, one row per figure."""

from __future__ import annotations

from importlib import metadata

from sonichu_jax.train.plans.plan import Plan

GIB = 1024**3


def versions() -> str:
    """jax and libtpu versions behind the estimates."""
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"jax {version('jax')}, libtpu {version('libtpu')}"


def _bytes(x: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f} B"


def _opt(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def rows(plan: Plan) -> list[tuple[str, str]]:
    m = plan.memory
    hbm = "" if plan.hbm_bytes is None else f" of {plan.hbm_bytes / GIB:.0f} GiB ({m['total'] / plan.hbm_bytes:.0%})"
    overhead = plan.compiler_flops / plan.model_flops if plan.model_flops else float("nan")
    return [
        ("stage", plan.stage),
        ("device kind", plan.device_kind),
        ("chips (hosts)", f"{plan.devices} ({plan.hosts})"),
        ("mesh data x fsdp", f"{plan.mesh['data']} x {plan.mesh['fsdp']}"),
        ("global batch (per chip)", f"{plan.global_batch} ({plan.batch_per_chip:g})"),
        ("per chip: parameters", _bytes(m["parameters"])),
        ("per chip: optimiser state", _bytes(m["optimiser"])),
        ("per chip: other state", _bytes(m["other_state"])),
        ("per chip: frozen teachers", _bytes(m["teachers"])),
        ("per chip: batch", _bytes(m["batch"])),
        ("per chip: temporaries", _bytes(m["temporaries"])),
        ("per chip: program", _bytes(m["program"])),
        ("per chip: total", _bytes(m["total"]) + hbm),
        ("fits in HBM", "n/a" if plan.hbm_bytes is None else ("yes" if plan.fits else "NO")),
        ("TFLOP/chip/step compiler", f"{plan.compiler_flops / 1e12:.3f}"),
        ("TFLOP/chip/step model", f"{plan.model_flops / 1e12:.3f} (x{overhead:.2f})"),
        ("est. step time ms", _opt(None if plan.step_seconds is None else plan.step_seconds * 1e3, ".1f")
         + (" (roofline)" if plan.time_source == "roofline" else "")
         + (f" (kernels {plan.kernel_seconds * 1e3:.1f} roofline)" if plan.kernel_seconds else "")),
        ("est. img/s", _opt(plan.img_per_s, ".0f")),
        ("est. MFU", _opt(plan.mfu, ".1%")),
        ("steps", str(plan.steps)),
        ("est. run time h", _opt(plan.run_hours, ".1f")),
        ("est. chip-hours", _opt(plan.chip_hours, ".0f")),
        ("compile s", f"{plan.compile_seconds:.0f}"),
    ]


def render(plans: list[Plan]) -> str:
    columns = [rows(p) for p in plans]
    labels = [label for label, _ in columns[0]]
    header = ["", *[p.topology for p in plans]]
    body = [[label, *[col[i][1] for col in columns]] for i, label in enumerate(labels)]
    widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    note = (f"est. = the TPU compiler's cost model ({versions()}), not a measurement; (roofline) = the "
            "compiler's FLOPs at peak plus its bytes at HBM bandwidth, where the cost model gives no time; kernels: "
            "the Pallas kernels' part of it, their FLOPs at peak plus their bytes at HBM bandwidth (no cost model); "
            "collectives not included; MFU = model FLOPs / (est. step time x peak bf16 FLOP/s of the chip)")
    return "\n".join([line(header), *[line(r) for r in body], note])
