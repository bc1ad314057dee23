"""Tensor transforms between PyTorch and Flax layouts, each with its exact inverse.

A forward transform receives the source array and the shape the Flax model expects, and
returns the array plus an optional note for the report (e.g. "class slot folded"). The
inverse is used for export; every inverse is bit-exact (pure permutations and flips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Note = str | None


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[np.ndarray, tuple[int, ...] | None], tuple[np.ndarray, Note]]
    inverse: Callable[[np.ndarray], np.ndarray]


def _plain(fn: Callable[[np.ndarray], np.ndarray]):
    return lambda arr, expected: (fn(arr), None)


IDENTITY = Transform("identity", _plain(lambda a: a), lambda a: a)

# nn.Linear (out, in) -> Dense kernel (in, out)
LINEAR = Transform("linear", _plain(lambda a: a.T), lambda a: a.T)

# Conv2d OIHW -> HWIO
CONV = Transform("conv", _plain(lambda a: a.transpose(2, 3, 1, 0)), lambda a: a.transpose(3, 2, 0, 1))

# ConvTranspose2d (in, out, kH, kW) -> (kH, kW, in, out) of the spatially flipped kernel,
# so that lax.conv_transpose without transpose_kernel equals PyTorch (REFERENCE.md s7).
DECONV = Transform(
    "deconv",
    _plain(lambda a: a[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)),
    lambda a: a.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1],
)


def _position_table(arr: np.ndarray, expected: tuple[int, ...] | None) -> tuple[np.ndarray, Note]:
    """Accept (N, D), (1, N, D) or (1, N + 1, D); fold a class slot when the model has none."""
    if arr.ndim == 2:
        arr = arr[None]
    if expected is not None and arr.shape[1] == expected[1] + 1 and arr.shape[2] == expected[2]:
        return arr[:, 1:] + arr[:, :1], "class slot folded into every patch position"
    return arr, None


POSITION_TABLE = Transform("position_table", _position_table, lambda a: a)
