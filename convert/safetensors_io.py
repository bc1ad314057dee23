"""Streaming safetensors reading and writing with numpy only (no torch, no JAX): positioned
reads, not the `safetensors` package's memory map, whose resident pages would count
towards the converter's peak memory (docs/checkpoints.md, "Where the weights are")."""

from __future__ import annotations

import json
import math
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
_ITEM_BYTES = {**{k: np.dtype(v).itemsize for k, v in _NUMPY_DTYPES.items()}, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "U16": 2, "U32": 4, "U64": 8}
_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own sanity bound on header size


def _bad(path: str, why: str) -> InputError:
    return InputError(f"cannot read {path} as safetensors: {why}")


def _check_entry(path: str, name: str, entry) -> int:
    """Validate one header entry; returns the end of its byte range."""
    if not isinstance(entry, dict):
        raise _bad(path, f"header entry {name!r} is not an object")
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if not isinstance(dtype, str):
        raise _bad(path, f"tensor {name} has no dtype")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise _bad(path, f"tensor {name} has no valid shape (got {shape!r})")
    if any(s < 0 for s in shape):
        raise _bad(path, f"tensor {name} has a negative shape {shape}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise _bad(path, f"tensor {name} has no valid data_offsets (got {offsets!r})")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise _bad(path, f"tensor {name} has data_offsets {offsets}, which do not form a byte range")
    size = _ITEM_BYTES.get(dtype)
    if size is not None and math.prod(shape) * size != end - begin:
        raise _bad(path, f"tensor {name}: shape {shape} of {dtype} needs {math.prod(shape) * size} bytes, "
                         f"its data_offsets span {end - begin}")
    return end


def read_header(path: str) -> tuple[dict, dict, int]:
    """(entries, metadata, data start) of a safetensors file, every entry validated and
    every byte range checked against the file size. Reads the header only."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise _bad(path, "the file is shorter than the 8-byte header length")
            (size,) = struct.unpack("<Q", raw)
            if size > _HEADER_LIMIT:
                raise _bad(path, f"it declares a header of {size} bytes")
            text = fh.read(size)
        if len(text) < size:
            raise InputError(f"{path} is truncated: its header is cut short")
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"the header is not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise _bad(path, f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "__metadata__ is not an object")
    data_end = max((_check_entry(path, name, entry) for name, entry in header.items()), default=0)
    # as the format's own validator: no two tensors share bytes (one would alias the other)
    ranges = sorted((e["data_offsets"], n) for n, e in header.items() if e["data_offsets"][0] < e["data_offsets"][1])
    for ((_, end), first), ((begin, _), second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise _bad(path, f"tensors {first} and {second} overlap (data_offsets)")
    available = os.path.getsize(path) - 8 - size
    if data_end > available:
        raise InputError(f"{path} is truncated: its header declares {data_end} bytes of tensor data, "
                         f"the file holds {max(available, 0)}")
    return header, metadata, 8 + size


class SafetensorsSource:
    """Reads one tensor at a time from a .safetensors file. bfloat16 tensors (which numpy
    lacks) are widened exactly to float32. Opening reads and validates the header only."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"checkpoint file not found: {self.path}")
        self._entries, self._metadata, self._data_start = read_header(self.path)

    def keys(self) -> Iterable[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> str:
        """The stored dtype's safetensors name (F32, BF16, ...)."""
        return self._entries[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        dtype = entry["dtype"]
        # bfloat16 is the top half of a float32: read the bits, then shift them into place.
        stored = np.dtype("<u2") if dtype == "BF16" else _NUMPY_DTYPES.get(dtype)
        if stored is None:
            raise InputError(f"{self.path}: tensor {name} has dtype {dtype}, which numpy cannot hold")
        array = np.empty(entry["shape"], dtype=np.dtype(stored).newbyteorder("<"))
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
    one tensor at a time in any order (a converter never holds the whole output); every
    declared tensor must be written before the file is complete."""

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
