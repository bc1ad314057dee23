"""Opening a weights file as a tensor source: safetensors, a torch pickle, or a sharded
checkpoint (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json`` + shards)."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from sonichu_jax.convert.safetensors_io import SafetensorsSource
from sonichu_jax.convert.torch_io import TORCH_SUFFIXES, TorchSource
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import read_json

INDEX_SUFFIX = ".index.json"


class ShardedSource:
    """The tensors of every shard named by a Hugging Face index file (``weight_map``: tensor
    name -> shard file), as one source; every shard is opened (headers only) and checked."""

    def __init__(self, index_path: str | os.PathLike):
        self.path = os.fspath(index_path)
        weight_map = read_json(self.path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{self.path} has no weight_map (tensor name -> shard file)")
        folder = os.path.dirname(os.path.abspath(self.path))
        self._shard_of = {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
        for shard in dict.fromkeys(self._shard_of.values()):
            if not os.path.isfile(shard):
                raise InputError(f"{self.path} names the shard {os.path.basename(shard)}, which is missing")
        self._shards = {shard: open_source(shard) for shard in dict.fromkeys(self._shard_of.values())}
        for name, shard in self._shard_of.items():
            if name not in self._shards[shard].keys():
                raise InputError(f"{self.path} places {name} in {os.path.basename(shard)}, which does not hold it")

    def keys(self) -> Iterable[str]:
        return list(self._shard_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shards[self._shard_of[name]].shape(name)

    def dtype(self, name: str) -> str:
        return self._shards[self._shard_of[name]].dtype(name)

    def get(self, name: str) -> np.ndarray:
        return self._shards[self._shard_of[name]].get(name)


def open_source(path: str | os.PathLike, entry: str | None = None):
    """A tensor source for a .safetensors file, a torch pickle (by suffix; ``entry`` picks
    the state dict inside its container) or a shard index."""
    path = os.fspath(path)
    if path.endswith(TORCH_SUFFIXES):
        return TorchSource(path, entry=entry)
    if entry is not None:
        raise InputError(f"{path}: a container entry ({entry!r}) applies to PyTorch pickles only")
    if path.endswith(INDEX_SUFFIX):
        return ShardedSource(path)
    return SafetensorsSource(path)
