"""Where the compiler's estimated step time goes: the TPU cost model's ``estimated_cycles``
of every top-level instruction, summed by kind and by source op; collectives and Pallas
kernels, which it does not price, counted in bytes and FLOPs instead.
"""

from __future__ import annotations

import re
from collections import Counter

_COMPUTATION = re.compile(r"\n(?:ENTRY )?(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.S)
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%\S+ = (.*?) ([a-z][\w\-]*)\(")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_CALLS = re.compile(r"calls=(%[\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_ITEMSIZE = {"pred": 1, "bf16": 2}
_KERNEL = re.compile(r"%([\w\-]+?)(?:\.\d+)? = (.*?) custom-call\(.*?custom_call_target=\"tpu_custom_call\""
                     r"(?:, operand_layout_constraints=\{(.*?)\}, frontend_attributes)?"
                     r"(?:=\{kernel_metadata=\{\s*\"xprof_metadata\":\"([^\n]*))?")
# Matmuls of (q rows x k rows x head dim) in each of Pallas's splash attention kernels
# (jax.experimental.pallas.ops.tpu.splash_attention): the forward pass computes the
# logits and probs x v; the fused backward kernel (as nn.vit.splash_attention runs it)
# recomputes the logits, then dv, dprobs, dk and dq.
_KERNEL_MATMULS = {"splash_mha_fwd": 2, "splash_mha_dkv": 5}


def _bytes_of(shape_text: str, lanes: bool = False) -> int:
    """Bytes of the arrays in ``shape_text``; with ``lanes``, as TPU HBM holds them: the
    minor dimension of a matrix rounded up to the 128 lanes of a tile."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        size = _ITEMSIZE.get(dtype) or int(re.sub(r"\D", "", dtype)) // 8
        shape = [int(d) for d in dims.split(",") if d]
        if lanes and len(shape) > 1:
            shape[-1] = -(-shape[-1] // 128) * 128
        for d in shape:
            size *= d
        total += size
    return total


def _dims(shape_text: str) -> list[list[int]]:
    """Floating-point arrays' dimensions, in order."""
    return [[int(d) for d in dims.split(",") if d] for dtype, dims in _ARRAY.findall(shape_text) if dtype[0] in "bf"]


def pallas_kernels(hlo_text: str) -> dict:
    """Pallas TPU kernels of a compiled program, per chip per step: {"calls", "flops",
    "bytes"}. Bytes: every operand read and result written once, as HBM holds them (the
    splash kernels run one block per sequence, `nn.vit.splash_attention`); FLOPs for
    the splash kernels, counted from their q and k operands (others count bytes only)."""
    calls, flops, nbytes = 0, 0.0, 0
    for name, results, operands, metadata in _KERNEL.findall(hlo_text):
        calls += 1
        nbytes += _bytes_of(results, lanes=True) + _bytes_of(operands, lanes=True)
        matmuls = next((n for prefix, n in _KERNEL_MATMULS.items() if name.startswith(prefix)), 0)
        if matmuls:
            q, k = _dims(operands)[:2]  # (..., rows, head dim), or (..., head dim, rows) for SEQ_MINOR (2)
            size = 1
            for d in q:
                size *= d
            flops += 2.0 * matmuls * size * k[-1 if '\\"k_layout\\": 2' in metadata else -2]
    return {"calls": calls, "flops": flops, "bytes": nbytes}


def _fusion_kind(bodies: dict[str, str], name: str, depth: int = 0) -> str:
    body = bodies.get(name, "")
    if re.search(r" (convolution|dot)\(", body):
        return "matmul"
    if re.search(r" (gather|scatter|dynamic-slice|dynamic-update-slice)\(", body):
        return "gather/scatter"
    if re.search(r" reduce\(", body):
        return "reduction"
    if depth < 2:
        for callee in _CALLS.findall(body):
            kind = _fusion_kind(bodies, callee, depth + 1)
            if kind != "elementwise":
                return kind
    return "elementwise"


def _source(line: str) -> str:
    """The JAX operation an instruction came from, e.g. ``transpose(jvp())/dot_general``."""
    m = _OP_NAME.search(line)
    return "/".join(m.group(1).split("/")[-2:]) if m else "?"


def breakdown(hlo_text: str, top: int = 12) -> dict:
    """{"by_kind": {kind: share of estimated cycles}, "top_ops": [(source op, kind, share)],
    "collective_bytes": bytes per chip moved by collectives in one step}."""
    bodies = {name: body for name, body in _COMPUTATION.findall(hlo_text)}
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    by_kind, by_op, collective = Counter(), Counter(), 0
    for line in entry[: entry.find("\n}\n")].splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        shape, op = m.groups()
        if op.removesuffix("-start") in COLLECTIVES:
            collective += _bytes_of(shape)
            continue
        cycles = _CYCLES.search(line)
        if not cycles:
            continue
        kind = _fusion_kind(bodies, _CALLS.search(line).group(1)) if op == "fusion" else (
            "copy/transpose" if op in ("copy", "transpose") else op)
        by_kind[kind] += int(cycles.group(1))
        by_op[(_source(line), kind)] += int(cycles.group(1))
    total = sum(by_kind.values()) or 1
    return {
        "by_kind": {k: v / total for k, v in by_kind.most_common()},
        "top_ops": [(src, kind, v / total) for (src, kind), v in by_op.most_common(top)],
        "collective_bytes": collective,
        "kernels": pallas_kernels(hlo_text),
    }


def render(result: dict) -> str:
    lines = ["est. cycles by kind: " + ", ".join(f"{k} {v:.1%}" for k, v in result["by_kind"].items() if v >= 0.005)]
    lines += [f"  {share:6.1%}  {kind:<15} {src}" for src, kind, share in result["top_ops"]]
    lines.append(f"collectives: {result['collective_bytes'] / 2**20:.1f} MiB per chip per step (not in the estimate)")
    k = result.get("kernels") or {}
    if k.get("calls"):
        lines.append(f"Pallas kernels (not in the cycles above; in the estimate by their roofline): {k['calls']} calls, "
                     f"{k['flops'] / 1e12:.3f} TFLOP, {k['bytes'] / 2**30:.2f} GiB per chip per step")
    return "\n".join(lines)
