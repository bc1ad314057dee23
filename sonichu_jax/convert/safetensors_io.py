"""Streaming safetensors access with numpy only (no torch, no JAX)."""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_path


class SafetensorsSource:
    """Reads one tensor at a time from a .safetensors file, so peak memory stays at the
    converted arrays plus a single source tensor."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"checkpoint file not found: {self.path}")
        try:
            self._file = safe_open(self.path, framework="numpy")
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise InputError(f"cannot read {self.path} as safetensors: {exc}") from None
        self._keys = list(self._file.keys())

    def keys(self) -> Iterable[str]:
        return list(self._keys)

    def get(self, name: str) -> np.ndarray:
        return self._file.get_tensor(name)

    def metadata(self) -> dict[str, str]:
        return dict(self._file.metadata() or {})


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a crash never leaves a truncated file under the final name."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, tmp, metadata=metadata)
