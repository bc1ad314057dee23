"""Feature files: backbone ``features`` with the names of the images they came from, as
``.safetensors`` (names and the other metadata, as strings, in the header) or ``.npz``
(a ``names`` array and one 0-d string array per metadata field; no pickle)."""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_path, check_output

FEATURE_SUFFIXES = (".safetensors", ".npz")


def save_features(path: str | os.PathLike, names: Sequence[str], features: np.ndarray,
                  metadata: Mapping[str, str] | None = None) -> None:
    path = check_output(path, FEATURE_SUFFIXES, what="feature file")
    features = np.ascontiguousarray(features, np.float32)
    if len(names) != len(features):
        raise ValueError(f"{len(names)} names for {len(features)} feature rows")
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        if path.lower().endswith(".safetensors"):
            save_file({"features": features}, tmp, metadata={**metadata, "names": json.dumps(list(names))})
        else:
            extra = {k: np.asarray(v) for k, v in metadata.items()}
            with open(tmp, "wb") as fh:  # a file object: numpy would append .npz to a name
                np.savez(fh, features=features, names=np.asarray(list(names), dtype=str), **extra)


def load_features(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(names, features, metadata) of a file written by `save_features`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"feature file not found: {path}")
    if path.lower().endswith(".safetensors"):
        with safe_open(path, framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
            features = fh.get_tensor("features")
        names = json.loads(metadata.pop("names", "[]"))
    elif path.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            features = data["features"]
            names = [str(n) for n in data["names"]]
            metadata = {k: str(data[k]) for k in data.files if k not in ("features", "names")}
    else:
        raise InputError(f"feature file {path} must end in {' or '.join(FEATURE_SUFFIXES)}")
    return names, features, metadata
