"""Prediction files, written by `predict` and read back by `evaluate`: FM_UIA per-task CSVs
(what `data.sources.load_csv` reads, image paths relative to the CSV's folder) with
``task``, ``width`` and ``height`` columns besides."""

from __future__ import annotations

import csv
import json
import os
from typing import Mapping, Sequence

import numpy as np

from sonichu_jax.config import TaskSpec
from sonichu_jax.data.records import Record
from sonichu_jax.data.sources import POINT_COLUMN, load_csv
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import write_csv


def write_predictions_csv(path: str | os.PathLike, task: str, predictions: Sequence) -> None:
    """``predictions``: `sonichu_jax.inference.Prediction` objects of one task."""
    folder = os.path.dirname(os.path.abspath(path))
    k = max((len(p.pixels) for p in predictions), default=0)
    header = ["image", "task", "width", "height"] + [f"point_{i + 1}_xy" for i in range(k)]
    rows = [
        [os.path.relpath(os.path.abspath(p.name), folder), task, p.orig_size[0], p.orig_size[1]]
        + [json.dumps([float(x), float(y)]) for x, y in p.pixels]
        for p in predictions
    ]
    write_csv(path, header, rows)


def _csv_task(path: str) -> tuple[str, int]:
    """The task a prediction CSV holds (its ``task`` column, else its file stem) and its
    keypoint count (the number of ``point_{i}_xy`` columns)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            tasks = {row.get("task", "").strip() for row in reader} - {""}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prediction file {path}: {exc}") from None
    k = sum(1 for c in columns if POINT_COLUMN.match(c.strip()))  # the columns load_csv reads
    if len(tasks) > 1:
        raise InputError(f"{path}: a prediction CSV holds one task, this one has {', '.join(sorted(tasks))}")
    task = tasks.pop() if tasks else os.path.splitext(os.path.basename(path))[0]
    if not k:
        raise InputError(f"{path}: no point_<i>_xy columns; columns: {', '.join(columns)}")
    return task, k


def load_predictions(path: str | os.PathLike) -> tuple[TaskSpec, dict[str, np.ndarray]]:
    """A prediction CSV -> (its task, {real image path: (K, 2) pixels}). Rows with a
    missing point are left out (they predict nothing to score)."""
    path = os.fspath(path)
    if not path.lower().endswith(".csv"):
        raise InputError(f"prediction file {path} must be a .csv written by predict")
    task, k = _csv_task(path)
    spec = TaskSpec(task, k)
    source = load_csv(path, task=task, tasks=(spec,), check_bounds=False)
    return spec, {os.path.realpath(r.image): r.keypoints for r in source if r.valid.all()}


def match_predictions(
    records: Sequence[Record], files: Mapping[str, tuple[TaskSpec, dict[str, np.ndarray]]]
) -> tuple[list[Record], dict[str, list[np.ndarray]], dict[str, int]]:
    """Keep the records every prediction file of their task covers.

    Returns (kept records, {file name: predictions of the kept records of its task, in
    order}, {file name: labelled images of its task it has no prediction for})."""
    if files and not all(isinstance(r.image, (str, os.PathLike)) for r in records):
        raise InputError("prediction files are matched to the images by path, and these records (a pack or "
                         "in-memory images) have none; evaluate the predictions against the image folder")
    missing: dict[str, int] = {}
    drop: set[int] = set()
    for name, (spec, preds) in files.items():
        absent = [i for i, r in enumerate(records) if r.task == spec.name and os.path.realpath(r.image) not in preds]
        missing[name] = len(absent)
        drop.update(absent)
    kept = [r for i, r in enumerate(records) if i not in drop]
    columns = {
        name: [preds[os.path.realpath(r.image)] for r in kept if r.task == spec.name]
        for name, (spec, preds) in files.items()
    }
    return kept, columns, missing
