"""Finding the state dict inside the container a training script saved (the search order:
docs/checkpoints.md, "Containers"), without torch: anything with ``shape`` and
``detach`` counts as a tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from sonichu_jax.errors import InputError

# Entries that hold a model's state dict, most preferred first: the trained weights before
# their EMA copies, a teacher before a student.
STATE_DICT_KEYS = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
    "ema", "model_ema", "state_dict_ema", "ema_state_dict", "teacher",
)
# I-JEPA keeps its three networks side by side; the layout tells them apart by name.
IJEPA_PARTS = ("encoder", "predictor", "target_encoder")


def is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "detach")


def flatten(tree: Any, prefix: str = "", out: dict | None = None) -> dict:
    """Nested mappings of tensors -> dotted names; other leaves (epoch, lr) are dropped."""
    out = {} if out is None else out
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            flatten(value, f"{prefix}{key}.", out)
    elif is_tensor(tree):
        out[prefix[:-1]] = tree
    return out


def _describe(tree: Mapping) -> str:
    parts = []
    for key, value in list(tree.items())[:12]:
        kind = f"{len(flatten(value))} tensors" if isinstance(value, Mapping) else type(value).__name__
        parts.append(f"{key} ({kind})")
    more = f", ... ({len(tree) - 12} more)" if len(tree) > 12 else ""
    return ", ".join(parts) + more


@dataclass
class Selection:
    tensors: dict  # dotted name -> tensor
    entry: str | None  # the container entry used ("state_dict", "model.ema", ...); None: the top level
    alternatives: list[str] = field(default_factory=list)  # other entries that hold tensors


def _walk(tree: Mapping, entry: str, where: str) -> Any:
    node: Any = tree
    for key in entry.split("."):
        if not isinstance(node, Mapping) or key not in node:
            keys = ", ".join(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
            raise InputError(f"{where} has no entry {entry!r} (entries: {keys})")
        node = node[key]
    return node


def select_state_dict(tree: Any, where: str, entry: str | None = None) -> Selection:
    """The state dict of a loaded pickle: ``entry`` (a dotted key path) when given, else the
    I-JEPA parts, else the first of `STATE_DICT_KEYS` that holds tensors (searched again
    one level down), else the top level when it holds tensors itself."""
    if not isinstance(tree, Mapping):
        raise InputError(f"{where} holds a {type(tree).__name__}, not a dict of tensors")
    if entry is not None:
        node = _walk(tree, entry, where)
        tensors = flatten(node)
        if not tensors:
            raise InputError(f"{where}: entry {entry!r} holds no tensors")
        return Selection(tensors, entry)
    if any(k in tree for k in IJEPA_PARTS[::2]) and all(isinstance(tree.get(k, {}), Mapping) for k in IJEPA_PARTS):
        parts = [k for k in IJEPA_PARTS if k in tree]
        return Selection(flatten({k: tree[k] for k in parts}), " + ".join(parts))
    candidates = [k for k in STATE_DICT_KEYS if k in tree and isinstance(tree[k], Mapping) and flatten(tree[k])]
    if candidates:
        node = tree[candidates[0]]
        try:
            inner = select_state_dict(node, where)
        except InputError:  # nested mappings without a recognisable entry: take them all
            inner = Selection(flatten(node), None)
        path = candidates[0] if inner.entry is None else f"{candidates[0]}.{inner.entry}"
        return Selection(inner.tensors, path, candidates[1:])
    if any(is_tensor(v) for v in tree.values()):  # a Mapping: checked first thing
        return Selection(flatten(tree), None)
    raise InputError(f"{where}: no state dict found among its entries: {_describe(tree)}; name the entry to use")
