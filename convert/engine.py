"""Layouts (a named table of rules for one family of checkpoints) and the engine that
applies them in two passes: `plan_conversion` matches names to rules without reading a
tensor; `run_plan` reads, transforms and hands over one target at a time, so peak
memory is the sink plus one target's source tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert.conversion_report import ConversionReport
from sonichu_jax.convert.rules import Ignore, Refuse, Rule

KNOWN_PREFIXES = ("module.", "model.")

Shapes = Mapping[str, tuple[int, ...]]
Defaults = Mapping[str, tuple[Callable[[], np.ndarray], str]]


class TensorSource(Protocol):
    """Random access to named tensors without loading them all (e.g. safetensors)."""

    def keys(self) -> Iterable[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Options:
    """What a layout's table may depend on besides the model config."""

    source_grid: tuple[int, int] | None = None  # the checkpoint's token grid, when known
    encoder: str = "target_encoder"  # I-JEPA: which encoder becomes the backbone


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    table: Callable[[ModelConfig, Options], list[Rule | Ignore | Refuse]]
    detect: Callable[[set[str]], bool]  # True when the prefix-stripped names look like this layout
    # Flax path prefixes this layout can fill; the model's other parameters are reported
    # as not provided (a backbone-only checkpoint) instead of as errors. None: all.
    provides: tuple[str, ...] | None = None
    # Applied to each prefix-stripped name before matching (e.g. I-JEPA's inner "module.").
    canonical: Callable[[str], str] = lambda name: name  # noqa: E731
    # Tensors PyTorch needs that Flax does not hold (BatchNorm counters), added on export.
    export_extras: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    # (tensors, hints, task name, options) -> `infer.Inferred`: the model config a file holds.
    infer: Callable | None = None
    # The model_type of a config.json that this layout's ``infer`` reads itself (transformers'
    # "vitpose"); any other config.json is read as a publisher's (see `config_json`).
    foreign_config: str | None = None


def strip_prefix(names: Iterable[str]) -> str:
    """The wrapper prefix shared by every name (``module.``, ``model.``, nested), or ''."""
    names, prefix = list(names), ""
    while names and (cand := next((c for c in KNOWN_PREFIXES if all(n.startswith(prefix + c) for n in names)), None)):
        prefix += cand
    return prefix


@dataclass(frozen=True)
class Step:
    """Fill one Flax path from its source tensors (file names, in the rule's order)."""

    target: str
    rule: Rule
    sources: tuple[str, ...]


@dataclass
class Plan:
    steps: list[Step]
    defaults: dict[str, tuple[Callable[[], np.ndarray], str]]  # paths filled without a source
    report: ConversionReport
    expected: Shapes = field(repr=False)
    checked: bool = False  # a dry run (sink None) has filled the report already

    @property
    def targets(self) -> list[str]:
        """Every path the conversion will produce, in the model's order."""
        filled = {s.target for s in self.steps} | set(self.defaults)
        return [p for p in self.expected if p in filled]


def plan_conversion(
    source: TensorSource,
    layout: Layout,
    cfg: ModelConfig,
    expected: Shapes,
    defaults: Defaults | None = None,
    *,
    options: Options | None = None,
    only: tuple[str, ...] | None = None,
) -> Plan:
    """Match names to rules without reading any tensor (``source`` gives names and shapes).

    ``expected`` holds every Flax path wanted and its shape; ``defaults`` gives, for
    paths a checkpoint may legitimately omit, a factory and a description; ``only``
    restricts loading to paths under these prefixes (tensors mapped elsewhere are skipped).
    """
    names = list(source.keys())
    prefix = strip_prefix(names)
    report = ConversionReport(layout=layout.name, prefix=prefix)
    entries = layout.table(cfg, options or Options())
    rules = [e for e in entries if isinstance(e, Rule)]
    ignores = [e for e in entries if isinstance(e, Ignore)]
    refusals = [e for e in entries if isinstance(e, Refuse)]
    groups: dict[str, tuple[Rule, tuple[str, ...], dict[int, str]]] = {}
    for full_name in names:
        name = layout.canonical(full_name[len(prefix) :])
        refusal = next((r for r in refusals if r.matches(name)), None)
        if refusal is not None:
            report.refused.append((full_name, refusal.reason))
            continue
        found = next(((rule, m) for rule in rules if (m := rule.match_source(name)) is not None), None)
        if found is None:
            ignore = next((ig for ig in ignores if ig.matches(name)), None)
            if ignore is not None:
                report.ignored.append((full_name, ignore.reason))
            else:
                report.unmapped.append(full_name)
                report.unmapped_shapes[full_name] = tuple(source.shape(full_name))
            continue
        found_rule, (target, slot, wanted) = found
        if only is not None and not target.startswith(only):
            report.skipped.append((full_name, target))
            continue
        if target not in expected:
            report.unmapped.append(full_name)
            report.unmapped_shapes[full_name] = tuple(source.shape(full_name))
            continue
        rule, group_wanted, have = groups.setdefault(target, (found_rule, wanted, {}))
        if group_wanted != wanted or slot in have:
            report.duplicates.append((full_name, target))
            continue
        have[slot] = full_name
    steps = []
    for target, (rule, wanted, have) in groups.items():
        if len(have) == len(wanted):
            steps.append(Step(target, rule, tuple(have[i] for i in range(len(wanted)))))
        else:
            report.incomplete.append((target, [n for i, n in enumerate(wanted) if i not in have]))
    used_defaults = {}
    for path in expected:
        if path in groups:
            continue
        if defaults and path in defaults:
            used_defaults[path] = defaults[path]
            report.defaulted.append((path, defaults[path][1]))
        elif layout.provides is not None and not path.startswith(layout.provides):
            report.not_provided.append(path)
        else:
            report.unfilled.append(path)
    report.expected = dict(expected)
    return Plan(steps, used_defaults, report, expected)


def run_plan(plan: Plan, source: TensorSource, sink: Callable[[str, np.ndarray], None] | None) -> ConversionReport:
    """Read, transform and hand over one target at a time; shape mismatches go to the
    report (and nothing for that target goes to the sink). With ``sink=None`` no tensor
    data is read: zero-stride stand-ins of the stored shapes go through the transforms,
    which finds every shape mismatch from the headers alone."""
    report = plan.report
    record = not plan.checked
    plan.checked = plan.checked or sink is None
    for step in plan.steps:
        if sink is None:
            arrays = tuple(np.broadcast_to(np.float32(0), source.shape(name)) for name in step.sources)
        else:
            arrays = tuple(source.get(name) for name in step.sources)
        array, note = step.rule.transform.forward(arrays, plan.expected[step.target])
        expected = tuple(plan.expected[step.target])
        if tuple(array.shape) != expected:
            if record:
                report.mismatched.append((", ".join(step.sources), step.target, tuple(array.shape), expected))
            continue
        if sink is not None:
            sink(step.target, np.ascontiguousarray(array, dtype=np.float32))
        if record:
            report.mapped.append((" + ".join(step.sources), step.target, step.rule.transform.name))
            if note:
                report.notes.append((" + ".join(step.sources), note))
    for path, (factory, _) in plan.defaults.items():
        if sink is not None:
            sink(path, np.asarray(factory(), dtype=np.float32).reshape(plan.expected[path]))
    return report


def convert_tensors(source: TensorSource, *args, **kwargs) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """`plan_conversion` (the same arguments), then `run_plan` into memory, one tensor read
    at a time: the filled arrays and the report (callers decide what to do unless ``ok``)."""
    plan = plan_conversion(source, *args, **kwargs)
    out: dict[str, np.ndarray] = {}
    run_plan(plan, source, out.__setitem__)
    return out, plan.report


def export_tensors(
    flat: Mapping[str, np.ndarray], layout: Layout, cfg: ModelConfig, options: Options | None = None
) -> dict[str, np.ndarray]:
    """Flax paths -> source names with inverse transforms (for PyTorch users). The first
    rule that can express a path names it (a layout lists its export names first).

    Raises KeyError naming a Flax path that no rule of the layout can express.
    """
    rules = [e for e in layout.table(cfg, options or Options()) if isinstance(e, Rule)]
    out: dict[str, np.ndarray] = {}
    for path, array in flat.items():
        for rule in rules:
            names = rule.to_sources(path)
            if names is not None:
                for name, part in zip(names, rule.transform.inverse(np.asarray(array))):
                    out[name] = np.ascontiguousarray(part)
                break
        else:
            raise KeyError(f"layout {layout.name} has no name for Flax parameter {path}")
    if layout.export_extras is not None:
        out.update(layout.export_extras(out))
    return out
