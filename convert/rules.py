"""Declarative table entries of a layout: name rules, ignores and refusals. A `Rule` pairs
PyTorch name patterns (several: their tensors are combined, as separate q, k, v) with one
Flax path pattern, both ways, with placeholders ``{i}`` (an index), ``{task}`` (a task
name) and ``{path}`` (a whole Flax path, for checkpoints already in Flax layout)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sonichu_jax.convert.transforms import Transform

_PLACEHOLDERS = {"i": r"\d+", "task": r"[^./]+", "path": r"[^.]+"}


def _compile(pattern: str) -> re.Pattern:
    """The whole-name regex of a pattern: its text literal, each ``{name}`` a named group."""
    regex = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{_PLACEHOLDERS[m[1]]})", re.escape(pattern))
    return re.compile(regex + r"\Z")


@dataclass(frozen=True)
class Rule:
    source: str | tuple[str, ...]  # e.g. "backbone.blocks.{i}.attn.qkv.weight", or (q, k, v) patterns
    target: str  # Flax path pattern, e.g. "backbone/blocks/{i}/attn/qkv/kernel"
    transform: Transform
    _source_res: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)
    _target_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.sources) != self.transform.arity:
            raise ValueError(f"rule {self.target}: {len(self.sources)} sources for a {self.transform.arity}-ary transform")
        object.__setattr__(self, "_source_res", tuple(_compile(s) for s in self.sources))
        object.__setattr__(self, "_target_re", _compile(self.target))

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    def match_source(self, name: str) -> tuple[str, int, tuple[str, ...]] | None:
        """(target path, which source slot ``name`` fills, all source names of that target)."""
        for slot, regex in enumerate(self._source_res):
            m = regex.match(name)
            if m:
                values = m.groupdict()
                return self.target.format(**values), slot, tuple(s.format(**values) for s in self.sources)
        return None

    def to_sources(self, path: str) -> tuple[str, ...] | None:
        m = self._target_re.match(path)
        return tuple(s.format(**m.groupdict()) for s in self.sources) if m else None


@dataclass(frozen=True)
class _Pattern:
    pattern: str  # regular expression searched in the (prefix-stripped) source name
    reason: str

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


class Ignore(_Pattern):
    """Source tensors that carry nothing the Flax model needs, and why."""


class Refuse(_Pattern):
    """Source tensors of a variant this project cannot represent (e.g. ViTPose+ experts):
    the conversion fails, naming each such tensor and the reason."""
