"""Tensor transforms between PyTorch and Flax layouts: ``forward(source arrays, expected
shape) -> (array, note for the report)`` and an ``inverse`` for export, bit-exact except
where the forward step discarded information, which its note says (a folded table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sonichu_jax.posembed import factor_grid, resize_grid_table, sincos_2d

Note = str | None
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[tuple[np.ndarray, ...], Shape | None], tuple[np.ndarray, Note]]
    inverse: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    arity: int = 1  # number of source tensors combined into one Flax array


def elementwise(name: str, forward: Callable[[np.ndarray], np.ndarray], inverse: Callable[[np.ndarray], np.ndarray]) -> Transform:
    """A one-source transform with no note."""
    return Transform(name, lambda arrays, expected: (forward(arrays[0]), None), lambda a: (inverse(a),))


IDENTITY = elementwise("identity", lambda a: a, lambda a: a)

# nn.Linear (out, in) -> Dense kernel (in, out)
LINEAR = elementwise("linear", lambda a: a.T, lambda a: a.T)

# Conv2d OIHW -> HWIO
CONV = elementwise("conv", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))

# ConvTranspose2d (in, out, kH, kW) -> (kH, kW, in, out) of the spatially flipped kernel,
# so that lax.conv_transpose without transpose_kernel equals PyTorch (docs/checkpoints.md, "Tensor transforms").
DECONV = elementwise(
    "deconv",
    lambda a: a[:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
    lambda a: a.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1],
)


def _split3(a: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    return tuple(np.split(a, 3, axis=axis))


# Separate q, k, v Linear layers (HF transformers) -> one fused qkv Dense. Our fused
# layout is rows [q; k; v] of the PyTorch weight, i.e. kernel columns (docs/checkpoints.md, "Tensor transforms").
FUSED_QKV_LINEAR = Transform(
    "fused_qkv_linear",
    lambda arrays, expected: (np.concatenate(arrays, axis=0).T, None),
    lambda a: _split3(a.T, 0),
    arity=3,
)
FUSED_QKV_BIAS = Transform(
    "fused_qkv_bias",
    lambda arrays, expected: (np.concatenate(arrays, axis=0), None),
    lambda a: _split3(a, 0),
    arity=3,
)


# How a checkpoint family stores the extra leading slot of its position table.
CLASS_SLOT_ALWAYS = "always"  # ViTPose: (1, N + 1, D); the class slot is added to every token
CLASS_SLOT_OPTIONAL = "optional"  # Sonichu: (1, N, D), or (1, N + 1, D) folded like ViTPose
CLASS_SLOT_DROP = "drop"  # timm: a class token's own position; patches never see it


def position_table(
    target_grid: tuple[int, int],
    source_grid: tuple[int, int] | None,
    class_slot: str,
    fixed_sincos: bool = False,
) -> Transform:
    """Transform for a (1, S, D) / (S, D) position table of ``source_grid`` (None: the
    target grid when the slot count allows, else the most nearly square one). The expected
    shape says whether the model keeps a class slot; a slot it lacks is folded or dropped,
    one it needs is zero; another grid is resized or, fixed sin-cos, recomputed
    (docs/checkpoints.md, "Tensor transforms")."""

    def forward(arrays: tuple[np.ndarray, ...], expected: Shape | None) -> tuple[np.ndarray, Note]:
        (table,) = arrays
        table = table.reshape(-1, table.shape[-1])
        slots, width = table.shape
        n_target = target_grid[0] * target_grid[1]
        grid = source_grid
        if grid is None:
            has_slot = class_slot == CLASS_SLOT_ALWAYS or slots == n_target + 1
            grid = target_grid if slots - has_slot == n_target else factor_grid(slots - has_slot)
        patches_in = grid[0] * grid[1]
        if slots not in (patches_in, patches_in + 1):
            # Not a table of this grid: pass it through for the caller's shape check.
            return table[None], f"{slots} slots do not fit the source grid {grid}"
        cls_slot, patches = (table[:1], table[1:]) if slots == patches_in + 1 else (None, table)
        notes = []
        if tuple(grid) != tuple(target_grid):
            if fixed_sincos:
                patches = sincos_2d(width, target_grid).astype(table.dtype)
                notes.append(f"fixed sin-cos table recomputed for grid {tuple(target_grid)} (was {tuple(grid)})")
            else:
                patches = resize_grid_table(patches, grid, target_grid)
                notes.append(f"resized {tuple(grid)} -> {tuple(target_grid)} (bicubic, class slot kept aside)")
        wants_slot = expected is not None and expected[-2] == n_target + 1
        if wants_slot and cls_slot is None:
            cls_slot = np.zeros((1, width), table.dtype)
            notes.append("zero class slot added (adds nothing when folded)")
        elif not wants_slot and cls_slot is not None:
            if class_slot == CLASS_SLOT_DROP:
                notes.append("class-token slot dropped (the model has no class token)")
            else:
                patches = patches + cls_slot
                notes.append("class slot folded into every patch position")
            cls_slot = None
        out = patches if cls_slot is None else np.concatenate([cls_slot, patches])
        return out[None], "; ".join(notes) or None

    def inverse(table: np.ndarray) -> tuple[np.ndarray, ...]:
        n_target = target_grid[0] * target_grid[1]
        if class_slot == CLASS_SLOT_ALWAYS and table.shape[-2] == n_target:
            # ViTPose files always carry the slot; a zero one reproduces an unfolded table.
            table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
        return (table,)

    return Transform("position_table", forward, inverse)
