"""What a conversion did, tensor by tensor, in a form a user can read and a test can check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sonichu_jax.errors import SonichuError


@dataclass
class ConversionReport:
    layout: str = ""
    prefix: str = ""
    mapped: list[tuple[str, str, str]] = field(default_factory=list)  # (source, target, transform)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source, what was done)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    defaulted: list[tuple[str, str]] = field(default_factory=list)  # (target, how it was filled)
    unmapped: list[str] = field(default_factory=list)  # source tensors no rule claimed
    unfilled: list[str] = field(default_factory=list)  # Flax parameters nothing filled
    mismatched: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)  # (source, target, got, expected)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, target already filled)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (source, why it cannot be represented)
    incomplete: list[tuple[str, list[str]]] = field(default_factory=list)  # (target, its missing sources)
    # Not errors: parameters this layout never holds (a backbone-only file's heads) and
    # tensors mapped outside the part being loaded (a predictor when loading a backbone).
    not_provided: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, target outside scope)

    @property
    def ok(self) -> bool:
        return not (
            self.unmapped or self.unfilled or self.mismatched or self.duplicates or self.refused or self.incomplete
        )

    def problems(self) -> list[str]:
        lines = [f"refused: {name}: {why}" for name, why in self.refused]
        lines += [f"unmapped source tensor: {name}" for name in self.unmapped]
        lines += [f"Flax parameter not filled: {path}" for path in self.unfilled]
        lines += [
            f"{dst} needs {', '.join(missing)}, missing from the checkpoint" for dst, missing in self.incomplete
        ]
        lines += [
            f"shape mismatch: {src} -> {dst}: converted shape {tuple(got)}, the model expects {tuple(exp)}"
            for src, dst, got, exp in self.mismatched
        ]
        lines += [f"{src} maps to {dst}, which another tensor already filled" for src, dst in self.duplicates]
        return lines

    def summary(self) -> str:
        head = f"layout {self.layout}" + (f" (prefix {self.prefix!r} stripped)" if self.prefix else "")
        parts = [
            f"{head}: {len(self.mapped)} mapped, {len(self.ignored)} ignored, "
            f"{len(self.unmapped)} unmapped, {len(self.unfilled)} unfilled, {len(self.mismatched)} shape mismatches"
            + (f", {len(self.refused)} refused" if self.refused else "")
        ]
        parts += [f"  note: {src}: {what}" for src, what in self.notes]
        parts += [f"  ignored: {src}: {why}" for src, why in self.ignored]
        parts += [f"  default: {dst}: {how}" for dst, how in self.defaulted]
        parts += [f"  skipped: {src} -> {dst} (not part of what is being loaded)" for src, dst in self.skipped]
        if self.not_provided:
            parts.append(f"  not provided by this layout ({len(self.not_provided)} parameters): "
                         + ", ".join(_collapse(self.not_provided)))
        parts += [f"  ERROR {line}" for line in self.problems()]
        return "\n".join(parts)

    def listing(self) -> str:
        """Every mapped tensor, one line each (the CLI's ``--report``)."""
        return "\n".join(f"  mapped: {src} -> {dst} [{how}]" for src, dst, how in self.mapped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "prefix": self.prefix,
            "ok": self.ok,
            "mapped": [{"source": s, "target": t, "transform": x} for s, t, x in self.mapped],
            "notes": [{"source": s, "note": n} for s, n in self.notes],
            "ignored": [{"source": s, "reason": r} for s, r in self.ignored],
            "defaulted": [{"target": t, "how": h} for t, h in self.defaulted],
            "refused": [{"source": s, "reason": r} for s, r in self.refused],
            "incomplete": [{"target": t, "missing": list(m)} for t, m in self.incomplete],
            "not_provided": list(self.not_provided),
            "skipped": [{"source": s, "target": t} for s, t in self.skipped],
            "unmapped": list(self.unmapped),
            "unfilled": list(self.unfilled),
            "mismatched": [
                {"source": s, "target": t, "shape": list(g), "expected": list(e)} for s, t, g, e in self.mismatched
            ],
        }


def _collapse(paths: list[str]) -> list[str]:
    """Group paths by their first two components (``heads/AOP``) for a short listing."""
    groups: dict[str, int] = {}
    for path in paths:
        key = "/".join(path.split("/")[:2])
        groups[key] = groups.get(key, 0) + 1
    return [f"{key}/* ({n})" for key, n in groups.items()]


class ConversionError(SonichuError):
    """A checkpoint that does not fit the model; carries the full report."""

    def __init__(self, report: ConversionReport, context: str = ""):
        self.report = report
        problems = report.problems()
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        prefix = f"{context}: " if context else ""
        super().__init__(f"{prefix}checkpoint does not match the model (layout {report.layout}):\n  {shown}{more}")
