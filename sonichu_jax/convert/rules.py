"""Declarative name rules: a PyTorch tensor name pattern <-> a Flax state path pattern.

Patterns use placeholders: ``{i}`` matches a decimal index, ``{task}`` a task name (no
dots or slashes), ``{path}`` a whole Flax path (for checkpoints already in Flax layout). The same rule maps a source name to a Flax path and, for export, a Flax
path back to the source name, with the tensor transform and its inverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sonichu_jax.convert.transforms import Transform

_PLACEHOLDERS = {"i": r"\d+", "task": r"[^./]+", "path": r"[^.]+"}


def _compile(pattern: str) -> re.Pattern:
    out, pos = [], 0
    for match in re.finditer(r"\{(\w+)\}", pattern):
        out.append(re.escape(pattern[pos : match.start()]))
        name = match.group(1)
        out.append(f"(?P<{name}>{_PLACEHOLDERS[name]})")
        pos = match.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Rule:
    source: str  # PyTorch name pattern, e.g. "backbone.blocks.{i}.attn.qkv.weight"
    target: str  # Flax path pattern, e.g. "backbone/blocks/{i}/attn/qkv/kernel"
    transform: Transform
    _source_re: re.Pattern = field(init=False, repr=False, compare=False)
    _target_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_source_re", _compile(self.source))
        object.__setattr__(self, "_target_re", _compile(self.target))

    def to_target(self, name: str) -> str | None:
        m = self._source_re.match(name)
        return self.target.format(**m.groupdict()) if m else None

    def to_source(self, path: str) -> str | None:
        m = self._target_re.match(path)
        return self.source.format(**m.groupdict()) if m else None


@dataclass(frozen=True)
class Ignore:
    """Source tensors that carry nothing the Flax model needs, and why."""

    pattern: str  # regular expression over the (prefix-stripped) source name
    reason: str

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None
