"""What a checkpoint holds and how it would load, from its headers alone: the container
entry, the layout, a collapsed tensor tree with dtypes and parameter counts, the inferred
model config and task table, and what would map, be skipped, be missing or be new."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Sequence

from sonichu_jax.convert.files import open_checkpoint
from sonichu_jax.convert.engine import strip_prefix
from sonichu_jax.convert.loading import plan_model
from sonichu_jax.convert.rename import RuleSpec
from sonichu_jax.convert.summary import Group, group_apart, human_count, plural, tensor_tree, top_level
from sonichu_jax.errors import SonichuError


def inspect_checkpoint(path: str | os.PathLike, *, layout: str | None = None, rename: Sequence[RuleSpec] | None = None,
                       entry: str | None = None, task_name: str = "keypoints") -> dict[str, Any]:
    """A JSON-ready account of a checkpoint (file, directory or Hub name). Reads headers
    only: no tensor data of a safetensors file (torch pickles are memory-mapped and their
    tensors never touched). ``error`` holds why it would not load, if it would not."""
    ckpt = open_checkpoint(path, rename=rename, entry=entry)
    source = ckpt.source
    names = list(source.keys())
    shapes = {n: tuple(source.shape(n)) for n in names}
    dtypes = {n: source.dtype(n) for n in names}
    info: dict[str, Any] = {
        "path": os.fspath(path),
        "weights": ckpt.weights,
        "entry": ckpt.entry,
        "context": list(ckpt.context),
        "tensors": len(names),
        "parameters": sum(g.params for g in top_level(shapes)),
        "dtypes": dict(Counter(dtypes.values())),
        "prefix": strip_prefix(names),
        "top_level": [vars(g) for g in top_level(shapes)],
        "tree": [vars(line) | {"shape": list(line.shape)} for line in tensor_tree(shapes, dtypes)],
    }
    try:
        planned = plan_model(ckpt, layout=layout, task_name=task_name, read_values=False)
    except SonichuError as exc:
        info.update(layout=None, error=str(exc))
        return info
    report, cfg = planned.report, planned.cfg
    mapped_sources = [s for m in report.mapped for s in m[0].split(" + ")]
    info.update(
        layout=planned.layout.name,
        config=cfg.to_dict(),
        config_notes=list(planned.inferred.notes),
        tasks={t.name: t.num_keypoints for t in cfg.tasks},
        mapping={
            "mapped_tensors": len(mapped_sources),
            "filled_variables": len(report.mapped) + len(report.defaulted),
            "new_variables": len(report.expected) - len(report.mapped) - len(report.defaulted) - len(report.unfilled)
            - len(report.mismatched),
            "model_variables": len(report.expected),
            "ignored": [{"reason": r, "tensors": n} for r, n in Counter(r for _, r in report.ignored).items()],
            "skipped": [vars(g) for g in group_apart({s: shapes.get(s, ()) for s, _ in report.skipped}, mapped_sources)],
            "not_used": [vars(g) for g in group_apart(report.unmapped_shapes, mapped_sources)],
            "missing": [vars(g) for g in group_apart({p: report.expected[p] for p in report.unfilled},
                                                       [m[1] for m in report.mapped], sep="/")],
            "new_heads": list(report.new_heads),
            **{key: report.to_dict()[key] for key in ("refused", "mismatched", "notes")},
        },
        loads=not report.errors(),
        loads_strict=not report.errors(strict=True),
        error="\n".join(report.errors()) or None,
    )
    return info


def _groups(title: str, groups: list[dict]) -> list[str]:
    if not groups:
        return []
    total = sum(g["params"] for g in groups)
    n = sum(g["tensors"] for g in groups)
    return [f"  {title}: {plural(n, 'tensor')}, {human_count(total)} parameters"] + [
        f"    {Group(**g).describe()}" for g in groups]


def format_inspection(info: dict[str, Any]) -> str:
    """The human-readable form of `inspect_checkpoint`'s result."""
    lines = [f"checkpoint: {info['path']}" + ("" if info["weights"] == info["path"] else f" ({info['weights']})")]
    lines += [f"  {c}" for c in info["context"]]
    dtypes = ", ".join(f"{d or '?'}: {n}" for d, n in info["dtypes"].items())
    lines.append(f"tensors: {info['tensors']}, {human_count(info['parameters'])} parameters ({dtypes})"
                 + (f"; prefix {info['prefix']!r}" if info["prefix"] else ""))
    width = max((len(g["key"]) for g in info["top_level"]), default=0)
    lines += [f"  {g['key']:<{width}}  {human_count(g['params']):>9} parameters, {plural(g['tensors'], 'tensor')}"
              for g in info["top_level"]]
    lines.append("tensor tree:")
    width = max((len(t["pattern"]) for t in info["tree"]), default=0)
    lines += [f"  {t['pattern']:<{width}}  {str(tuple(t['shape'])):<20} {t['dtype']}" for t in info["tree"]]
    if info.get("layout") is None:
        lines.append(f"layout: none\n  {info['error']}")
        return "\n".join(lines)
    cfg = info["config"]
    lines.append(f"layout: {info['layout']}")
    lines.append(
        f"model config: {cfg['image_size'][0]}x{cfg['image_size'][1]} input, patch {cfg['patch_size']}, width "
        f"{cfg['width']}, depth {cfg['depth']}, {cfg['num_heads']} heads, MLP x{cfg['mlp_ratio']:g}, "
        f"{cfg['pos_embed']} positions, {cfg['head_kind']} heads ({cfg['head_sharing']})")
    lines.append("tasks: " + ", ".join(f"{name} ({k})" for name, k in info["tasks"].items()))
    lines += [f"  note: {n}" for n in info["config_notes"]]
    m = info["mapping"]
    fresh = f" ({m['new_variables']} in new heads)" if m["new_variables"] else ""
    lines.append(f"mapping: {m['mapped_tensors']} tensors fill {m['filled_variables']} of the model's "
                 f"{m['model_variables']} variables{fresh}")
    lines += [f"  ignored: {g['tensors']} tensors ({g['reason']})" for g in m["ignored"]]
    lines += [f"  note: {n['source']}: {n['note']}" for n in m["notes"]]
    lines += _groups("skipped (not part of the model)", m["skipped"])
    lines += _groups("not used by the model", m["not_used"])
    lines += _groups("missing from the checkpoint", m["missing"])
    if m["new_heads"]:
        lines.append(f"  {len(m['new_heads'])} heads newly initialised: {', '.join(m['new_heads'])}")
    lines += [f"  refused: {r['source']}: {r['reason']}" for r in m["refused"]]
    lines += [f"  shape mismatch: {x['source']} -> {x['target']}: {tuple(x['shape'])}, the model expects "
              f"{tuple(x['expected'])}" for x in m["mismatched"]]
    verdict = "loads" if info["loads"] else "does not load"
    strictly = "also with strict=True" if info["loads_strict"] else "not with strict=True"
    lines.append(f"result: {verdict}" + (f" ({strictly})" if info["loads"] else f":\n  {info['error']}"))
    return "\n".join(lines)
