"""Layouts (a named table of rules for one family of checkpoints) and the engine that
applies them one tensor at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert.report import ConversionReport
from sonichu_jax.convert.rules import Ignore, Rule

KNOWN_PREFIXES = ("module.", "model.")


class TensorSource(Protocol):
    """Random access to named tensors without loading them all (e.g. safetensors)."""

    def keys(self) -> Iterable[str]: ...

    def get(self, name: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    rules: Callable[[ModelConfig], list[Rule]]
    ignores: tuple[Ignore, ...]
    detect: Callable[[set[str]], bool]  # True when the prefix-stripped names look like this layout

    def find_rule(self, rules: list[Rule], name: str) -> tuple[Rule, str] | None:
        for rule in rules:
            target = rule.to_target(name)
            if target is not None:
                return rule, target
        return None


def strip_prefix(names: Iterable[str]) -> str:
    """The wrapper prefix shared by every name (``module.``, ``model.``, nested), or ''."""
    names = list(names)
    prefix = ""
    while names:
        for cand in KNOWN_PREFIXES:
            if all(n.startswith(prefix + cand) for n in names):
                prefix += cand
                break
        else:
            return prefix
    return prefix


def convert_tensors(
    source: TensorSource,
    layout: Layout,
    cfg: ModelConfig,
    expected: Mapping[str, tuple[int, ...]],
    defaults: Mapping[str, tuple[Callable[[], np.ndarray], str]] | None = None,
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Map every source tensor to a Flax path, reading one tensor at a time.

    ``expected`` holds every Flax path the model has and its shape; ``defaults`` gives,
    for paths a checkpoint may legitimately omit, a factory and a description.
    Returns the filled arrays and a report; callers decide what to do when not ``report.ok``.
    """
    names = list(source.keys())
    prefix = strip_prefix(names)
    report = ConversionReport(layout=layout.name, prefix=prefix)
    rules = layout.rules(cfg)
    out: dict[str, np.ndarray] = {}
    for full_name in names:
        name = full_name[len(prefix) :]
        found = layout.find_rule(rules, name)
        if found is None:
            ignore = next((ig for ig in layout.ignores if ig.matches(name)), None)
            if ignore is not None:
                report.ignored.append((full_name, ignore.reason))
            else:
                report.unmapped.append(full_name)
            continue
        rule, target = found
        if target not in expected:
            report.unmapped.append(full_name)
            continue
        if target in out:
            report.duplicates.append((full_name, target))
            continue
        array, note = rule.transform.forward(source.get(full_name), expected[target])
        if tuple(array.shape) != tuple(expected[target]):
            report.mismatched.append((full_name, target, tuple(array.shape), tuple(expected[target])))
            continue
        out[target] = np.ascontiguousarray(array, dtype=np.float32)
        report.mapped.append((full_name, target, rule.transform.name))
        if note:
            report.notes.append((full_name, note))
    for path in expected:
        if path in out:
            continue
        if defaults and path in defaults:
            factory, how = defaults[path]
            out[path] = factory()
            report.defaulted.append((path, how))
        else:
            report.unfilled.append(path)
    return out, report


def export_tensors(flat: Mapping[str, np.ndarray], layout: Layout, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Flax paths -> source names with inverse transforms (for PyTorch users).

    Raises KeyError naming a Flax path that no rule of the layout can express.
    """
    rules = layout.rules(cfg)
    out: dict[str, np.ndarray] = {}
    for path, array in flat.items():
        for rule in rules:
            name = rule.to_source(path)
            if name is not None:
                out[name] = np.ascontiguousarray(rule.transform.inverse(np.asarray(array)))
                break
        else:
            raise KeyError(f"layout {layout.name} has no name for Flax parameter {path}")
    return out
