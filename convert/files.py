"""Finding and opening a checkpoint: a directory, a weights file, or a Hugging Face Hub
name, its ``config.json``, the container entry and the rename rules."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from sonichu_jax.config import CONFIG_NAME, PREPROCESSOR_CONFIG_NAME
from sonichu_jax.convert.rename import RenamedSource, RuleSpec
from sonichu_jax.convert.weight_files import INDEX_SUFFIX, open_source
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import read_json

FLAX_WEIGHTS_NAME = "flax_model.safetensors"
TORCH_WEIGHTS_NAME = "model.safetensors"
# What a checkpoint directory may hold, most preferred first: our own Flax file, then the
# Hugging Face names (a single safetensors file, sharded safetensors, a torch pickle).
WEIGHT_NAMES = (FLAX_WEIGHTS_NAME, TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_NAME + INDEX_SUFFIX,
                "pytorch_model.bin", "pytorch_model.bin" + INDEX_SUFFIX)
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def resolve_weights(path: str | os.PathLike) -> tuple[str | None, str]:
    """(the folder whose config.json describes the weights, or None; the weights file) for
    a checkpoint directory or a weights file. A file with one of the standard names shares
    its folder's config.json; any other file (``vitpose_base.pth``) stands alone."""
    path = os.fspath(path)
    if os.path.isfile(path):
        standard = os.path.basename(path) in WEIGHT_NAMES
        return (os.path.dirname(os.path.abspath(path)) if standard else None), path
    if not os.path.isdir(path):
        raise InputError(f"checkpoint not found: {path}")
    for name in WEIGHT_NAMES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return path, candidate
    present = ", ".join(sorted(os.listdir(path))[:10]) or "nothing"
    if path.rstrip("/").endswith((".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".json")):
        raise InputError(f"{path} is a folder, not a weights file (it has: {present})")
    raise InputError(f"{path} holds none of {', '.join(WEIGHT_NAMES)} (it has: {present}); name the weights file")


def hub_directory(name: str) -> str:
    """Fetch config.json, preprocessor_config.json and the weights of a Hub repository
    (cached; ``HF_HUB_OFFLINE=1`` uses the cache only) and return the local snapshot."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise InputError(f"{name} not found locally; loading it from the Hugging Face Hub needs "
                         "huggingface_hub: pip install 'sonichu-jax[hub]'") from None

    offline = []

    def fetch(filename: str) -> str | None:
        try:
            return hf_hub_download(name, filename)
        except EntryNotFoundError as exc:  # not in the repository, or (offline) not in the cache
            offline.append(isinstance(exc, FileNotFoundError))
            return None
        except Exception as exc:  # unknown repository, gated, network
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{name} not found locally, and the Hugging Face Hub gave no {filename}: {first}") from None

    for optional in (CONFIG_NAME, PREPROCESSOR_CONFIG_NAME):
        fetch(optional)
    for weights in WEIGHT_NAMES:
        local = fetch(weights)
        if local is None:
            continue
        if weights.endswith(INDEX_SUFFIX):
            for shard in sorted(set(read_json(local).get("weight_map", {}).values())):
                if fetch(shard) is None:
                    raise InputError(f"Hub repository {name}: {weights} names {shard}, which is missing")
        return os.path.dirname(local)
    where = "the Hugging Face Hub cache (offline)" if all(offline) else f"the Hugging Face Hub repository {name}"
    raise InputError(f"{name} not found locally, and {where} holds none of {', '.join(WEIGHT_NAMES)}")


def local_path(path: str | os.PathLike) -> str:
    """``path`` itself, or the local snapshot folder of a Hub name (``owner/name``) when no
    such local path exists. A name whose owner is a local folder is a mistyped path: it
    is never sent over the network."""
    path = os.fspath(path)
    if os.path.exists(path) or not HUB_NAME.fullmatch(path):
        return path
    owner = path.split("/")[0]
    if os.path.exists(owner):
        raise InputError(f"checkpoint not found: {path} ({owner} is a local folder, so {path} is not looked up on "
                         "the Hugging Face Hub)")
    return hub_directory(path)


@dataclass
class Checkpoint:
    """An opened checkpoint: its tensors (seen through the rename rules), its config.json
    (a dict, {} when none) and what was done to find them."""

    path: str  # what was asked for
    weights: str  # the weights file (or shard index)
    directory: str | None  # the folder whose config.json describes the weights
    source: object  # TensorSource
    config: dict
    context: list[str] = field(default_factory=list)

    @property
    def entry(self) -> str | None:
        return getattr(self.source, "entry", None)


def open_checkpoint(path: str | os.PathLike, *, rename: Sequence[RuleSpec] | None = None,
                    entry: str | None = None) -> Checkpoint:
    """Open a checkpoint directory, weights file or Hub name (``owner/name``, when no such
    local path exists). Reads headers (or the pickle's structure) only."""
    path = os.fspath(path)
    context = []
    local = local_path(path)
    if local != path:
        context.append(f"fetched from the Hugging Face Hub: {path} -> {local}")
    directory, weights = resolve_weights(local)
    source = open_source(weights, entry=entry)
    if getattr(source, "entry", None):
        also = getattr(source, "alternatives", [])
        context.append(f"state dict taken from the container entry {source.entry!r}"
                       + (f" (also present: {', '.join(also)})" if also else ""))
    if rename:
        source = RenamedSource(source, rename)
        context.append(f"rename rules renamed {len(source.renamed)} tensors"
                       + "".join(f"; e.g. {old} -> {new}" for old, new in source.renamed[:1]))
        context += [f"rename rule {p!r} matched no tensor" for p in source.unused_rules]
    config = os.path.join(directory, CONFIG_NAME) if directory else None  # the config.json beside the weights
    data = read_json(config) if config and os.path.isfile(config) else {}
    return Checkpoint(path, weights, directory, source, data, context)
