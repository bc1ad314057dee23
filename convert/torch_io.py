"""Reading PyTorch pickles (``.pth`` / ``.pth.tar``, e.g. the official I-JEPA checkpoints).

torch is optional: it is imported only when such a file is opened, and the converter
never needs it for safetensors.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from sonichu_jax.errors import InputError

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".ckpt")


def _flatten(tree, prefix: str, out: dict) -> None:
    """Nested dicts of tensors -> dotted names; non-tensor entries (epoch, lr) are dropped."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            _flatten(value, f"{prefix}{key}.", out)
    elif hasattr(tree, "detach") and hasattr(tree, "shape"):
        out[prefix[:-1]] = tree


class TorchSource:
    """Tensors of a torch pickle, loaded lazily (memory-mapped where torch can)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"checkpoint file not found: {self.path}")
        try:
            import torch
        except ImportError:
            raise InputError(f"{self.path} is a PyTorch pickle: reading it needs torch (pip install torch), "
                             "or convert it to safetensors first") from None
        try:
            # weights_only refuses arbitrary pickled code; mmap keeps tensors on disk until read.
            tree = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for corrupt or foreign files
            raise InputError(f"cannot read {self.path} as a PyTorch checkpoint: {exc}") from None
        self._tensors: dict = {}
        _flatten(tree, "", self._tensors)

    def keys(self) -> Iterable[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def get(self, name: str) -> np.ndarray:
        import torch

        tensor = self._tensors[name].detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16; widening is exact
        return tensor.numpy().copy()


def open_source(path: str | os.PathLike):
    """A tensor source for a .safetensors file or a torch pickle, chosen by suffix."""
    from sonichu_jax.convert.safetensors_io import SafetensorsSource

    path = os.fspath(path)
    if path.endswith(TORCH_SUFFIXES):
        return TorchSource(path)
    return SafetensorsSource(path)
