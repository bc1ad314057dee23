"""Reading PyTorch pickles (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.pth.tar``) with
``weights_only=True``; torch is imported only when one is opened. Which pickled objects
are refused and which are read as inert placeholders: docs/checkpoints.md, "Containers"."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Iterable

import numpy as np

from sonichu_jax.convert.containers import select_state_dict
from sonichu_jax.errors import InputError

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".ckpt")

# Pickled globals that only carry data: replaced by `_Placeholder` (we never need their values).
_DATA_GLOBALS = re.compile(r"numpy(\.[\w.]+)?|argparse\.Namespace")
_DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class _Placeholder:
    """Stands in for a pickled data object (numpy array, namespace); holds nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _load(torch, path: str):
    """torch.load with weights_only; memory-mapped unless the file predates the zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def load_tree(path: str):
    """The unpickled object of a torch file, or InputError saying why it cannot be read.
    Never repeats torch's advice to turn ``weights_only`` off."""
    try:
        import torch  # optional, and seconds to import: only when a pickle is opened
    except ImportError:
        raise InputError(f"{path} is a PyTorch pickle: reading it needs torch (pip install torch), "
                         "or convert it to safetensors first") from None
    if zipfile.is_zipfile(path):  # torch.save stores its entries; a deflated one may be a zip bomb
        with zipfile.ZipFile(path) as archive:
            packed = [i for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise InputError(f"{path} holds {len(packed)} compressed entries ({sum(i.compress_size for i in packed):,} "
                             f"bytes declared to expand to {sum(i.file_size for i in packed):,}), which torch.save "
                             "never writes; re-save the state dict with torch.save")
    try:  # torch >= 2.5 lists a zip file's refused globals without unpickling it
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy (pre-zip) file cannot be scanned; loading it names one
        found = []
    try:
        _refuse_code(path, found)
        with torch.serialization.safe_globals([(_Placeholder, name) for name in found]):
            return _load(torch, path)
    except pickle.UnpicklingError as exc:
        _refuse_code(path, re.findall(r"GLOBAL ([\w.]+)", str(exc)), legacy=True)
        raise _unreadable(path, exc) from None
    except InputError:
        raise
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise _unreadable(path, exc) from None


def _refuse_code(path: str, names: list[str], legacy: bool = False) -> None:
    """InputError when ``names`` hold a pickled global that could run code (in a legacy
    file, any global: its data objects cannot be listed before unpickling)."""
    unsafe = [n for n in names if legacy or not _DATA_GLOBALS.fullmatch(n)]
    if unsafe:
        raise InputError(f"{path} holds pickled Python objects besides tensors ({', '.join(unsafe)}); unpickling "
                         "them could run code, so the file is refused. Save the state dict alone, or as safetensors")


def _unreadable(path: str, exc: Exception) -> InputError:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return InputError(f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: {first})")


class TorchSource:
    """Tensors of a torch pickle (memory-mapped where torch can), taken from the container
    entry that holds the state dict (see `containers.select_state_dict`)."""

    def __init__(self, path: str | os.PathLike, entry: str | None = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"checkpoint file not found: {self.path}")
        selection = select_state_dict(load_tree(self.path), self.path, entry)
        self._tensors = selection.tensors
        self.entry = selection.entry
        self.alternatives = selection.alternatives

    def keys(self) -> Iterable[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> str:
        kind = str(self._tensors[name].dtype).removeprefix("torch.")
        return _DTYPE_NAMES.get(kind, kind)

    def get(self, name: str) -> np.ndarray:
        import torch  # loaded already by load_tree; kept out of the module's imports

        tensor = self._tensors[name].detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16; widening is exact
        return tensor.numpy().copy()
