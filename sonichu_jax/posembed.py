"""Position tables in numpy, so that the Flax modules and the converter (no JAX) build the
same ones: the fixed 2D sin-cos table, bicubic resizing, a token grid from a slot count."""

from __future__ import annotations

import numpy as np

# PyTorch's bicubic (and OpenCV's) cubic convolution coefficient; Keys' paper uses -0.5.
CUBIC_A = -0.75


def sincos_2d(width: int, grid: tuple[int, int]) -> np.ndarray:
    """(gh * gw, width) fixed table in the MAE / I-JEPA layout: the first half of the
    features encodes the column, the second half the row, each as [sin, cos] of
    pos * omega_k with omega_k = 1 / 10000^(k / (width / 4))."""
    gh, gw = grid
    cols, rows = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def encode(pos):
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t``."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bicubic interpolation with half-pixel centres
    (PyTorch ``align_corners=False``): taps outside the input repeat the border value."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
        np.add.at(matrix, (np.arange(n_out), idx), weights[:, tap])
    return matrix


def resize_grid_table(table: np.ndarray, grid_in: tuple[int, int], grid_out: tuple[int, int]) -> np.ndarray:
    """(gh * gw, D) table laid out row-major over the grid -> (gh' * gw', D), separable
    bicubic; the arithmetic runs in float64 and the result keeps the input dtype."""
    (hi, wi), (ho, wo) = grid_in, grid_out
    grid = table.reshape(hi, wi, -1).astype(np.float64)
    out = np.einsum("ah,hwd,bw->abd", bicubic_matrix(hi, ho), grid, bicubic_matrix(wi, wo))
    return out.reshape(ho * wo, -1).astype(table.dtype)


def factor_grid(count: int) -> tuple[int, int]:
    """The most nearly square (rows, cols) with rows >= cols and rows * cols = count:
    (16, 16) for 256 and (16, 12) for ViTPose's 256x192 input. Only a guess; callers say so."""
    cols = int(np.floor(np.sqrt(count)))
    while count % cols:
        cols -= 1
    return count // cols, cols
