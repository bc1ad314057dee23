"""A run report: one self-contained HTML page of what training runs did: the runs, the
per-task MRE table of every finished run's model (and the teachers' median), the error
distribution, the training curves, and each model's worst images drawn."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from sonichu_jax.config import ModelConfig
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_path, check_output
from sonichu_jax.report import page, plots
from sonichu_jax.report.gallery import worst_tiles
from sonichu_jax.report.runs import Run, find_runs
from sonichu_jax.evaluation import task_table
from sonichu_jax.report.scoring import Column, EvalSet, evaluation_set, score_runs

REPORT_SUFFIXES = (".html", ".htm")


@dataclass
class ReportResult:
    path: str
    runs: list[Run]
    evalset: EvalSet | None
    columns: list[Column]
    notes: list[str] = field(default_factory=list)


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    data: str | None = None,
    worst: int = 5,
    tta: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> ReportResult:
    """Write the report of the runs under ``paths`` to ``out`` (.html); see the module
    docstring. ``data``: the images to evaluate on (every labelled one); by default a
    held-out ``data/test`` beside the runs, else the runs' own validation split."""
    out = check_output(out, REPORT_SUFFIXES, what="report")
    if worst < 0:
        raise InputError(f"the number of worst images must be >= 0, got {worst}")
    paths = [os.fspath(p) for p in paths]
    runs = find_runs(paths)
    notes = [f"{run.name}: {run.status()}" for run in runs if run.status()]
    model_runs = [run for run in runs if run.model_dir is not None]
    evalset, columns, tasks = None, [], ()
    if model_runs:
        tasks = task_table([ModelConfig.load(run.model_dir) for run in model_runs], [run.name for run in model_runs])
        evalset = evaluation_set(model_runs, paths, tasks, data)
        columns = score_runs(model_runs, evalset.records, tta=tta, batch_size=batch_size, progress=progress)
        present = {r.task for r in evalset.records}
        tasks = tuple(t.name for t in tasks if t.name in present)
    records = evalset.records if evalset else []
    galleries = {
        column.name: {task: worst_tiles(column, records, task, worst) for task in tasks}
        for column in columns
    } if worst else {}
    html = page.render(
        runs=runs, evalset=evalset, columns=columns, tasks=tasks,
        curves={run.name: plots.training_curves(run.metrics) for run in runs},
        distribution=plots.error_distribution(columns, records, tasks) if columns else None,
        galleries=galleries, worst=worst, notes=notes, tta=tta,
    )
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(html)
    return ReportResult(out, runs, evalset, columns, notes)
