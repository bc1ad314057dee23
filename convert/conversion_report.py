"""What a conversion did, tensor by tensor, in a form a user can read and a test can check:
unexpected and missing tensors in one block, grouped by prefix with parameter counts
(``aux_head.*: 4.2 M parameters, 14 tensors``). Which of them are errors: `errors`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sonichu_jax.convert.summary import group_apart, human_count, plural, tensor_tree
from sonichu_jax.errors import SonichuError


@dataclass
class ConversionReport:
    layout: str = ""
    prefix: str = ""
    mapped: list[tuple[str, str, str]] = field(default_factory=list)  # (source, target, transform)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source, what was done)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    defaulted: list[tuple[str, str]] = field(default_factory=list)  # (target, how it was filled)
    unmapped: list[str] = field(default_factory=list)  # source tensors the model does not use
    unfilled: list[str] = field(default_factory=list)  # Flax variables nothing filled
    mismatched: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)  # (source, target, got, expected)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, target already filled)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (source, why it cannot be represented)
    incomplete: list[tuple[str, list[str]]] = field(default_factory=list)  # (target, its missing sources)
    # Not errors: parameters this layout never holds (a backbone-only file's heads) and
    # tensors mapped outside the part being loaded (a predictor when loading a backbone).
    not_provided: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, target outside scope)
    new_heads: list[str] = field(default_factory=list)  # tasks whose heads start freshly initialised
    context: list[str] = field(default_factory=list)  # container entry, renames, config notes
    unmapped_shapes: dict[str, tuple] = field(default_factory=dict, repr=False)
    expected: dict[str, tuple] = field(default_factory=dict, repr=False)  # every Flax variable wanted

    @property
    def ok(self) -> bool:
        """Nothing at all out of place (what ``strict`` loading requires)."""
        return not self.errors(strict=True)

    def errors(self, strict: bool = False) -> list[str]:
        """Problems that stop loading. Always: refused, mis-shaped, duplicate or incomplete
        tensors, missing variables. With ``strict``: also unused tensors and new heads."""
        lines = [f"refused: {name}: {why}" for name, why in self.refused]
        lines += [
            f"shape mismatch: {src} -> {dst}: converted shape {tuple(got)}, the model expects {tuple(exp)}"
            for src, dst, got, exp in self.mismatched
        ]
        lines += [f"{src} maps to {dst}, which another tensor already filled" for src, dst in self.duplicates]
        lines += [f"{dst} needs {', '.join(missing)}, missing from the checkpoint" for dst, missing in self.incomplete]
        if self.unfilled:
            lines.append(self.missing_block())
        if strict and self.unmapped:
            lines.append(self.unexpected_block())
        if strict and self.new_heads:
            lines.append(self.new_heads_line())
        return lines

    # -- the grouped blocks --------------------------------------------------------------
    def unexpected_block(self) -> str:
        used = [name for m in self.mapped for name in m[0].split(" + ")] + [s[0] for s in self.skipped]
        return _block(self.unmapped_shapes, used, ".", "tensor", "of the checkpoint {} not used by the model")

    def missing_block(self) -> str:
        shapes = {p: self.expected.get(p, ()) for p in self.unfilled}
        filled = [p for p in self.expected if p not in shapes]
        return _block(shapes, filled, "/", "model variable", "{} missing from the checkpoint")

    def new_heads_line(self) -> str:
        return f"{plural(len(self.new_heads), 'head')} newly initialised: {', '.join(self.new_heads)}"

    def summary(self) -> str:
        head = f"layout {self.layout}" + (f" (prefix {self.prefix!r} stripped)" if self.prefix else "")
        parts = [f"{head}: {len(self.mapped)} mapped, {len(self.ignored)} ignored, {len(self.unmapped)} not used, "
                 f"{len(self.unfilled)} missing, {len(self.mismatched)} shape mismatches"
                 + (f", {len(self.refused)} refused" if self.refused else "")]
        parts += [f"  {line}" for line in self.context]
        parts += [f"  note: {src}: {what}" for src, what in self.notes]
        parts += [f"  ignored {plural(len(names), 'tensor')} ({why}): {_patterns(names)}"
                  for why, names in _by(self.ignored).items()]
        parts += [f"  default: {dst}: {how}" for dst, how in self.defaulted]
        if self.skipped:
            names = [src for src, _ in self.skipped]
            parts.append(f"  skipped {plural(len(names), 'tensor')} (not part of what is being loaded): "
                         f"{_patterns(names)}")
        if self.unmapped:
            parts.append("  " + self.unexpected_block())
        if self.new_heads:
            parts.append("  " + self.new_heads_line())
        parts += [f"  ERROR {line}" for line in self.errors()]
        return "\n".join(parts)

    def listing(self) -> str:
        """Every mapped tensor, one line each (the CLI's ``--report``)."""
        return "\n".join(f"  mapped: {src} -> {dst} [{how}]" for src, dst, how in self.mapped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "prefix": self.prefix,
            "ok": self.ok,
            "context": list(self.context),
            "mapped": [{"source": s, "target": t, "transform": x} for s, t, x in self.mapped],
            "notes": [{"source": s, "note": n} for s, n in self.notes],
            "ignored": [{"source": s, "reason": r} for s, r in self.ignored],
            "defaulted": [{"target": t, "how": h} for t, h in self.defaulted],
            "refused": [{"source": s, "reason": r} for s, r in self.refused],
            "incomplete": [{"target": t, "missing": list(m)} for t, m in self.incomplete],
            "not_provided": list(self.not_provided),
            "new_heads": list(self.new_heads),
            "skipped": [{"source": s, "target": t} for s, t in self.skipped],
            "unmapped": [{"source": s, "shape": list(self.unmapped_shapes.get(s, ()))} for s in self.unmapped],
            "unfilled": list(self.unfilled),
            "mismatched": [
                {"source": s, "target": t, "shape": list(g), "expected": list(e)} for s, t, g, e in self.mismatched
            ],
        }


def _block(shapes: dict[str, tuple], others: list[str], sep: str, noun: str, what: str) -> str:
    """A head line (how many ``noun``s, ``what``, their parameters), then one line per group."""
    n, total = len(shapes), sum(math.prod(s) for s in shapes.values())
    head = f"{plural(n, noun)} {what.format('is' if n == 1 else 'are')} ({human_count(total)} parameters):"
    return "\n    ".join([head] + [g.describe() for g in group_apart(shapes, others, sep=sep)])


def _by(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, reason in pairs:
        out.setdefault(reason, []).append(name)
    return out


def _patterns(names: list[str], limit: int = 4) -> str:
    """A few collapsed name patterns standing for ``names``."""
    lines = tensor_tree({n: () for n in names})
    shown = ", ".join(line.pattern for line in lines[:limit])
    return shown + (f", ... ({len(lines) - limit} more patterns)" if len(lines) > limit else "")


class ConversionError(SonichuError):
    """A checkpoint that does not fit the model; carries the full report."""

    def __init__(self, report: ConversionReport, context: str = "", strict: bool = False):
        self.report = report
        problems = report.errors(strict)
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        prefix = f"{context}: " if context else ""
        super().__init__(f"{prefix}checkpoint does not fit the model (layout {report.layout}):\n  {shown}{more}")
