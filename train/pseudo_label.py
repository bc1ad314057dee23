"""Pseudo-labels: writing them with a teacher (the flip TTA mean as the label, the views'
disagreement in original pixels as the confidence) and selecting which enter a run
(`select_pseudo_records`: filter, cap per task, weight as copies; docs/recipe.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

import jax
import numpy as np

from sonichu_jax.config import TaskSpec
from sonichu_jax.data.pipeline import PipelineConfig, make_eval_pipeline
from sonichu_jax.data.records import Record
from sonichu_jax.data.sources import manifest_line
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_path
from sonichu_jax.train.configlib import PseudoLabelSet
from sonichu_jax.train.state import split_model
from sonichu_jax.train.step import make_predict_step


def _confidence(record: Record) -> float:
    return math.inf if record.confidence is None else float(record.confidence)


def select_pseudo_records(
    pset: PseudoLabelSet, records: Sequence[Record], tasks: Sequence[TaskSpec], seed: int
) -> list[Record]:
    """The records of one pseudo-label file that enter training, as `pset` says."""
    known = {t.name for t in tasks}
    unknown = sorted(set(pset.tasks) - known) + sorted({t for t, _ in pset.caps} - known)
    if unknown:
        raise InputError(f"pseudo-label set {pset.path}: unknown tasks {', '.join(unknown)}")
    if pset.weight < 0:
        raise InputError(f"pseudo-label set {pset.path}: weight must be >= 0, got {pset.weight}")
    kept = [dataclasses.replace(r, is_pseudo=True) for r in records
            if r.has_label and (not pset.tasks or r.task in pset.tasks) and _confidence(r) <= pset.max_disagreement_px]
    caps = dict(pset.caps)
    by_task: dict[str, list[Record]] = {}
    for r in kept:
        by_task.setdefault(r.task, []).append(r)
    selected = []
    for task, group in by_task.items():
        if task in caps:
            group = sorted(group, key=lambda r: (_confidence(r), r.source_id))[: caps[task]]
        selected.extend(group)
    whole, frac = divmod(pset.weight, 1.0)
    out = selected * int(whole)
    if frac > 0 and selected:
        rng = np.random.default_rng([seed, len(selected)])
        extra = rng.choice(len(selected), size=int(round(frac * len(selected))), replace=False)
        out.extend(selected[i] for i in sorted(extra))
    return out


def _frames_for_task(records: Sequence[Record], task: str | None) -> list[Record]:
    """The records without labels, ``task`` filled in where they have none (frame folders)."""
    out = []
    for r in records:
        name = r.task or task
        if name is None:
            raise InputError(f"{r.source_id or r.image}: no task; frames without a task need the task given")
        out.append(dataclasses.replace(r, task=name, keypoints=None, valid=None, is_pseudo=False))
    return out


def write_pseudo_labels(
    model,
    records: Sequence[Record],
    out_path: str | os.PathLike,
    *,
    task: str | None = None,
    batch_size: int = 16,
    max_disagreement_px: float = math.inf,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Predict every record with flip TTA and write the pseudo-label manifest; the counts
    ``written`` and ``rejected`` (disagreement above the threshold)."""
    cfg = model.cfg
    frames = _frames_for_task(records, task)
    for r in frames:
        cfg.task(r.task)  # unknown task: a clear error before any work
    model.train()  # the graphdef the predict step expects; it switches to eval itself
    graphdef, params, rest = split_model(model)
    predict = jax.jit(make_predict_step(graphdef, cfg, tta=True))
    pipe = make_eval_pipeline(
        frames, cfg.tasks, PipelineConfig(batch_size=batch_size, image_size=cfg.image_size, augment=None),
        process_index=0, process_count=1,
    )
    lines, rejected = [], 0
    for batch in pipe:
        views = np.asarray(predict(params, rest, batch["image"], int(batch["task_id"][0])))
        for row in np.flatnonzero(batch["mask"] > 0):
            record = frames[int(batch["index"][row])]
            size = batch["orig_size"][row]
            k = cfg.task(record.task).num_keypoints
            plain, mirrored = views[0, row, :k] * size, views[1, row, :k] * size
            disagreement = float(np.linalg.norm(plain - mirrored, axis=-1).mean())
            if disagreement > max_disagreement_px:
                rejected += 1
                continue
            labelled = dataclasses.replace(
                record, keypoints=0.5 * (plain + mirrored), valid=None, is_pseudo=True,
                confidence=round(disagreement, 3),
            )
            lines.append(manifest_line(labelled, size=(int(size[0]), int(size[1]))))
        if progress is not None:
            progress(int((batch["mask"] > 0).sum()))
    with atomic_path(out_path) as tmp, open(tmp, "w") as fh:
        fh.write("".join(line + "\n" for line in lines))
    return {"written": len(lines), "rejected": rejected}
