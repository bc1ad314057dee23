"""Short accounts of many tensors: parameter counts in human units, a tensor tree with
numbered blocks collapsed (``backbone.blocks.{0..11}.attn.qkv.weight``), and unexpected or
missing tensors grouped by the shortest prefix that sets them apart (``aux_head.*``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

_NUMBER = re.compile(r"\d+\Z")


def human_count(n: int) -> str:
    """4194304 -> '4.2 M', 786432 -> '786.4 K', 12 -> '12'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _render_indices(values: set[int]) -> str:
    ordered = sorted(values)
    if len(ordered) == 1:
        return str(ordered[0])
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{{{ordered[0]}..{ordered[-1]}}}"
    return "{" + ",".join(map(str, ordered)) + "}"


def _collapse_numbers(names: Iterable[str], sep: str, extra=lambda name: ()) -> dict[tuple, list[str]]:
    """Names grouped by (their components with numbers blanked, *extra(name))."""
    groups: dict[tuple, list[str]] = {}
    for name in names:
        parts = tuple(None if _NUMBER.match(p) else p for p in name.split(sep))
        groups.setdefault((parts, *extra(name)), []).append(name)
    return groups


def _pattern(names: list[str], sep: str) -> str:
    split = [n.split(sep) for n in names]
    out = []
    for i, part in enumerate(split[0]):
        out.append(_render_indices({int(s[i]) for s in split}) if _NUMBER.match(part) else part)
    return sep.join(out)


@dataclass(frozen=True)
class Line:
    """One line of a collapsed tensor tree: a name pattern and what it stands for."""

    pattern: str
    shape: tuple[int, ...]
    dtype: str
    tensors: int
    params: int


def _merge_one_component(lines: list[Line], sep: str) -> list[Line]:
    """Merge lines that differ in exactly one (non-numeric) component, with equal shape and
    dtype: ``heads.{AOP,HC}.final_layer.bias (4,)``."""
    width = max((len(line.pattern.split(sep)) for line in lines), default=0)
    for pos in range(width):
        groups: dict[tuple, list[Line]] = {}
        for line in lines:
            parts = line.pattern.split(sep)
            if pos >= len(parts) or "{" in parts[pos] or _NUMBER.match(parts[pos]):
                groups[(line.pattern,)] = [line]
                continue
            key = (tuple(parts[:pos]), tuple(parts[pos + 1 :]), line.shape, line.dtype)
            groups.setdefault(key, []).append(line)
        merged = []
        for group in groups.values():
            if len(group) == 1:
                merged.append(group[0])
                continue
            parts = group[0].pattern.split(sep)
            parts[pos] = "{" + ",".join(line.pattern.split(sep)[pos] for line in group) + "}"
            merged.append(Line(sep.join(parts), group[0].shape, group[0].dtype,
                               sum(g.tensors for g in group), sum(g.params for g in group)))
        lines = merged
    return lines


def tensor_tree(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str] | None = None,
                sep: str = ".") -> list[Line]:
    """Every tensor, collapsed: numbered blocks with equal shapes and dtypes become one
    line, then lines that differ in one name component only (per-task heads) merge."""
    dtypes = dtypes or {}
    groups = _collapse_numbers(shapes, sep, lambda n: (tuple(shapes[n]), dtypes.get(n, "")))
    lines = [
        Line(_pattern(names, sep), tuple(shapes[names[0]]), dtypes.get(names[0], ""), len(names),
             sum(math.prod(shapes[n]) for n in names))
        for names in groups.values()
    ]
    return sorted(_merge_one_component(lines, sep), key=lambda line: _natural(line.pattern))


@dataclass(frozen=True)
class Group:
    """Tensors under one prefix: ``aux_head.*`` (or one name when no prefix sets it apart)."""

    key: str
    tensors: int
    params: int

    def describe(self) -> str:
        return f"{self.key}: {human_count(self.params)} parameters, {plural(self.tensors, 'tensor')}"


def group_apart(names: Mapping[str, tuple[int, ...]], others: Iterable[str], sep: str = ".") -> list[Group]:
    """Group ``names`` (name -> shape) by the shortest prefix that no name in ``others``
    shares, numbered components collapsed: ``aux_head.*``, ``heads.NEW.*``,
    ``backbone.blocks.{0..11}.attn.rel_pos``."""
    taken = set()
    for other in others:
        parts = other.split(sep)
        taken.update(sep.join(parts[:i]) for i in range(1, len(parts) + 1))
    keys: dict[str, str] = {}
    for name in names:
        parts = name.split(sep)
        i = next((i for i in range(1, len(parts) + 1) if sep.join(parts[:i]) not in taken), len(parts))
        keys[name] = sep.join(parts[:i]) + (f"{sep}*" if i < len(parts) else "")
    by_key: dict[str, list[str]] = {}
    for name, key in keys.items():
        by_key.setdefault(key, []).append(name)
    groups = []
    for members in _collapse_numbers(by_key, sep).values():
        tensors = [n for key in members for n in by_key[key]]
        groups.append(Group(_pattern(members, sep), len(tensors), sum(math.prod(names[n]) for n in tensors)))
    return sorted(groups, key=lambda g: _natural(g.key))


def top_level(names: Mapping[str, tuple[int, ...]], sep: str = ".") -> list[Group]:
    """Tensors grouped by their first name component (``backbone.*``, ``heads.*``)."""
    by_first: dict[str, list[str]] = {}
    for name in names:
        first, _, rest = name.partition(sep)
        by_first.setdefault(first + (f"{sep}*" if rest else ""), []).append(name)
    return [Group(key, len(members), sum(math.prod(names[n]) for n in members))
            for key, members in sorted(by_first.items(), key=lambda kv: _natural(kv[0]))]
