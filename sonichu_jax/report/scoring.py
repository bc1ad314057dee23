"""The evaluation behind a report: which images, and every model's error on each of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sonichu_jax.config import TaskSpec
from sonichu_jax.data.records import Record
from sonichu_jax.data.sources import load_source
from sonichu_jax.data.splits import fair_split
from sonichu_jax.errors import InputError
from sonichu_jax.evaluation import MREReport, ensemble_images, image_mre, load_model, predict_records, score, sort_by_task
from sonichu_jax.report.runs import Run, held_out_set, run_data_spec


@dataclass
class EvalSet:
    records: list[Record]
    description: str  # one sentence for the page: which images, and why these


@dataclass
class Column:
    """One row of the results table: a model (or the teachers' ensemble) on the records
    ``indices`` of the evaluation set."""

    name: str
    kind: str  # teacher, student, ensemble
    passes: int  # forward passes per image (2 with flip TTA; an ensemble's sum)
    indices: list[int]
    predictions: list[np.ndarray]  # (K, 2) original pixels, one per index
    report: MREReport | None = None
    errors_px: np.ndarray | None = None  # (len(indices),) mean error per image


def _validation_split(runs: Sequence[Run], tasks: tuple[TaskSpec, ...]) -> EvalSet:
    settings = {}
    for run in runs:
        spec = run_data_spec(run.config)
        if spec is None:
            raise InputError(f"{run.path}/train_config.json does not record the data the run trained on; "
                             "name the data to evaluate on")
        data = run.config.get("data", {})
        settings[run.name] = (spec, float(data.get("val_fraction", 0.15)), int(data.get("split_seed", 42)))
    if len(set(settings.values())) > 1:
        listed = "; ".join(f"{name}: {s[0]} ({s[1]:g}, seed {s[2]})" for name, s in settings.items())
        raise InputError(f"the runs were validated on different data ({listed}); name one set to evaluate on")
    spec, fraction, seed = next(iter(settings.values()))
    source = load_source(spec, tasks=tasks, log=None)
    _, val = fair_split(source, fraction, seed)
    return EvalSet([source[i] for i in val],
                   f"the validation split the runs used: {fraction:.0%} of {spec} (seed {seed})")


def evaluation_set(runs: Sequence[Run], paths: Sequence[str], tasks: tuple[TaskSpec, ...],
                   data: str | None = None) -> EvalSet:
    """``data`` (all its labelled images) if given; else a held-out set kept beside the
    runs (``data/test`` of a directory of runs); else the runs' own validation split."""
    if data is not None:
        description = f"every labelled image of {os.path.abspath(data)}"
    else:
        data = held_out_set(paths)
        description = f"the held-out set {data}"
    if data is None:
        evalset = _validation_split(runs, tasks)
    else:
        source = load_source(data, tasks=tasks, log=None)
        if source.report.skipped:  # the count printed beside the MRE must not pass for the whole set
            issues = ", ".join(f"{k} {v}" for k, v in source.report.counts().items())
            description += f", less {source.report.skipped} records skipped ({issues})"
        evalset = EvalSet([r for r in source if r.has_label and not r.is_pseudo], description)
    if not evalset.records:
        raise InputError(f"no labelled images to evaluate on in {data or 'the validation split of the runs'}")
    sort_by_task(evalset.records, tasks)
    return evalset


def score_runs(runs: Sequence[Run], records: Sequence[Record], *, tta: bool = True, batch_size: int = 8,
               progress: bool = True) -> list[Column]:
    """Every finished run's model on ``records`` (the tasks it has), then the median of the
    teachers when there are two or more."""
    columns = []
    for run in runs:
        if run.model_dir is None:
            continue
        model, prep = load_model(run.model_dir)
        indices = [i for i, r in enumerate(records) if r.task in model.cfg.task_names]
        preds = predict_records(model, prep, [records[i] for i in indices], tta=tta, batch_size=batch_size,
                                progress=progress)
        columns.append(Column(run.name, run.kind, 2 if tta else 1, indices, preds))
    teachers = [c for c in columns if c.kind == "teacher"]
    if len(teachers) >= 2:
        combined = ensemble_images([dict(zip(c.indices, c.predictions)) for c in teachers], "median")
        columns.append(Column(f"median of {len(teachers)} teachers", "ensemble",
                              sum(c.passes for c in teachers), list(combined), list(combined.values())))
    for column in columns:
        chosen = [records[i] for i in column.indices]
        column.report = score(chosen, column.predictions)
        column.errors_px = np.array([image_mre(p, r.keypoints, r.valid) for p, r in zip(column.predictions, chosen)])
    return columns
