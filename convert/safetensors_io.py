"""Streaming safetensors reading and writing with numpy only (no torch, no JAX).

The format is an 8-byte little-endian header length, a JSON header naming every tensor's
dtype, shape and byte range, then the raw bytes. We read tensors with positioned reads
instead of the `safetensors` package's memory map: mapped pages of a 500 MB checkpoint
stay resident and count towards peak memory, which the converter keeps near one copy.
Files written here load with `safetensors.safe_open` and `safetensors.torch.load_file`.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Mapping

import numpy as np

from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_path

_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items()}
_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own sanity bound on header size


class SafetensorsSource:
    """Reads one tensor at a time from a .safetensors file. bfloat16 tensors (which numpy
    lacks) are widened exactly to float32."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"checkpoint file not found: {self.path}")
        try:
            with open(self.path, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > _HEADER_LIMIT:
                    raise ValueError(f"header of {size} bytes")
                header = json.loads(fh.read(size))
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {self.path} as safetensors: {exc}") from None
        self._metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + size
        self._entries = header

    def keys(self) -> Iterable[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        dtype = entry["dtype"]
        # bfloat16 is the top half of a float32: read the bits, then shift them into place.
        stored = np.dtype("<u2") if dtype == "BF16" else _NUMPY_DTYPES.get(dtype)
        if stored is None:
            raise InputError(f"{self.path}: tensor {name} has dtype {dtype}, which numpy cannot hold")
        array = np.empty(entry["shape"], dtype=np.dtype(stored).newbyteorder("<"))
        if array.nbytes != end - begin:
            raise InputError(f"{self.path}: tensor {name} spans {end - begin} bytes, not {array.nbytes}")
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start + begin)
            if fh.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
                raise InputError(f"{self.path} is truncated: tensor {name} ends past the end of the file")
        if dtype == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)


class SafetensorsWriter:
    """Writes a safetensors file whose tensor names, shapes and dtypes are known up front,
    one tensor at a time in any order, so a converter never holds the whole output.

    Use as a context manager over a path from `atomic_path`; every declared tensor must be
    written before the file is complete.
    """

    def __init__(self, path: str, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], metadata=None):
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        self._slots: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        offset = 0
        for name, (shape, dtype) in specs.items():
            dtype = np.dtype(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._slots[name] = (offset, tuple(shape), dtype)
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data buffer starts 8-byte aligned
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(encoded)) + encoded)
        self._data_start = 8 + len(encoded)
        self._fh.truncate(self._data_start + offset)
        self._pending = set(self._slots)

    def write(self, name: str, array: np.ndarray) -> None:
        offset, shape, dtype = self._slots[name]
        array = np.asarray(array)
        if array.shape != shape:
            raise ValueError(f"tensor {name} has shape {array.shape}, declared {shape}")
        self._fh.seek(self._data_start + offset)
        self._fh.write(np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).data)
        self._pending.discard(name)

    def close(self, complete: bool = True) -> None:
        """Close the file; with ``complete``, fail if a declared tensor was never written
        (pass False when abandoning a file that is about to be deleted)."""
        self._fh.close()
        if complete and self._pending:
            raise ValueError(f"tensors declared but never written: {', '.join(sorted(self._pending))}")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a crash never leaves a truncated file under the final name."""
    specs = {k: (np.shape(v), np.asarray(v).dtype) for k, v in tensors.items()}
    with atomic_path(path) as tmp, SafetensorsWriter(tmp, specs, metadata) as writer:
        for name, array in tensors.items():
            writer.write(name, array)
