"""Mean radial error (MRE), the FM_UIA metric, and the card's result table.

Per image: the mean Euclidean distance, in original pixels, over its valid keypoints.
Per task: the mean over that task's images. Weighted overall: the mean over all images
(tasks with many images dominate, as in the card's 7.30 px). Unweighted: the mean of the
per-task means (the card's 18.07 px). The same in mm for images whose pixel spacing is
known. Ensembles combine several models' predictions coordinate-wise (median by default,
as the card's five-teacher ensemble).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from sonichu_jax.errors import ConfigError


def keypoint_errors(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(..., K, 2) predictions and targets -> (..., K) distances, NaN where not valid."""
    dist = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(target, np.float64), axis=-1)
    return np.where(np.asarray(valid, bool), dist, np.nan)


def image_mre(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N, K, 2) -> (N,) mean error over each image's valid keypoints (NaN if none)."""
    errors = keypoint_errors(pred, target, valid)
    count = np.sum(~np.isnan(errors), axis=-1)
    total = np.nansum(errors, axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


ENSEMBLE_METHODS = ("median", "mean")


def combine(stacked, method: str = "median", xp=np):
    """Coordinate-wise combination over the leading (model) axis: (M, ...) -> (...).
    ``xp`` is numpy or jax.numpy, so that the distillation step applies the same rule to
    its teachers inside ``jit``."""
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(f"ensemble method must be one of {', '.join(ENSEMBLE_METHODS)}, got {method!r}")
    return xp.median(stacked, axis=0) if method == "median" else xp.mean(stacked, axis=0)


def ensemble(predictions: Sequence[np.ndarray], method: str = "median") -> np.ndarray:
    """Combine M models' (N, K, 2) predictions coordinate-wise -> (N, K, 2)."""
    return combine(np.stack([np.asarray(p, np.float64) for p in predictions]), method)


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


@dataclass
class TaskMRE:
    task: str
    n: int  # images with at least one valid keypoint
    mre_px: float
    per_keypoint_px: list[float]  # mean error of each keypoint over the images where it is valid
    n_mm: int = 0  # images with a known pixel spacing
    mre_mm: float | None = None


@dataclass
class MREReport:
    tasks: dict[str, TaskMRE] = field(default_factory=dict)
    weighted_px: float = float("nan")
    unweighted_px: float = float("nan")
    weighted_mm: float | None = None
    unweighted_mm: float | None = None

    @property
    def n(self) -> int:
        return sum(t.n for t in self.tasks.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: NaN (nothing to average) becomes null."""
        return {
            "n": self.n,
            "weighted_mre_px": _num(self.weighted_px),
            "unweighted_mre_px": _num(self.unweighted_px),
            "weighted_mre_mm": _num(self.weighted_mm),
            "unweighted_mre_mm": _num(self.unweighted_mm),
            "tasks": {
                name: {
                    "n": t.n,
                    "mre_px": _num(t.mre_px),
                    "per_keypoint_px": [_num(v) for v in t.per_keypoint_px],
                    "n_mm": t.n_mm,
                    "mre_mm": _num(t.mre_mm),
                }
                for name, t in self.tasks.items()
            },
        }


def compute_mre(
    tasks: Sequence[str],
    targets: Sequence[np.ndarray],
    valid: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    spacing_mm: Sequence[float | None] | None = None,
) -> MREReport:
    """MRE of one model over a list of images, each with its own task and keypoint count.

    ``targets[i]``, ``predictions[i]``: (K_i, 2) in original pixels; ``valid[i]``: (K_i,).
    Tasks appear in the report in first-seen order.
    """
    n = len(tasks)
    if not (len(targets) == len(valid) == len(predictions) == n):
        raise ValueError("tasks, targets, valid and predictions must have the same length")
    spacing = [None] * n if spacing_mm is None else list(spacing_mm)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    errors = {
        task: keypoint_errors(np.stack([predictions[i] for i in idx]), np.stack([targets[i] for i in idx]),
                              np.stack([valid[i] for i in idx]))
        for task, idx in by_task.items()
    }
    scales = {task: np.array([np.nan if spacing[i] is None else spacing[i] for i in idx], np.float64)
              for task, idx in by_task.items()}
    return report_from_errors(errors, scales)


def report_from_errors(
    errors: Mapping[str, np.ndarray], spacing_mm: Mapping[str, np.ndarray] | None = None
) -> MREReport:
    """The report from per-keypoint distances: ``errors[task]`` is (N, K) in original
    pixels, NaN where a keypoint is not valid (an image without any valid keypoint is
    not counted); ``spacing_mm[task]`` (N,) the pixel size, NaN where unknown."""
    report = MREReport()
    all_px, all_mm = [], []
    for task, err in errors.items():
        counted = ~np.isnan(err).all(axis=1)
        per_image = np.nanmean(err[counted], axis=1) if counted.any() else np.zeros(0)
        scale = np.full(len(err), np.nan) if spacing_mm is None else np.asarray(spacing_mm[task], np.float64)
        scale = scale[counted]
        with np.errstate(invalid="ignore"):
            per_keypoint = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in err.T]
        mm = per_image[np.isfinite(scale)] * scale[np.isfinite(scale)]
        report.tasks[task] = TaskMRE(
            task=task, n=int(counted.sum()), mre_px=float(per_image.mean()) if len(per_image) else float("nan"),
            per_keypoint_px=per_keypoint, n_mm=int(len(mm)), mre_mm=float(mm.mean()) if len(mm) else None,
        )
        all_px.append(per_image)
        all_mm.append(mm)
    px = np.concatenate(all_px) if all_px else np.zeros(0)
    if len(px):
        report.weighted_px = float(px.mean())
        report.unweighted_px = float(np.mean([t.mre_px for t in report.tasks.values() if t.n]))
    mm = np.concatenate(all_mm) if all_mm else np.zeros(0)
    if len(mm):
        report.weighted_mm = float(mm.mean())
        report.unweighted_mm = float(np.mean([t.mre_mm for t in report.tasks.values() if t.mre_mm is not None]))
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def format_table(columns: Mapping[str, MREReport], unit: str = "px") -> str:
    """The card's layout: one row per task (n, then MRE per column), then the weighted and
    unweighted rows. ``unit`` is ``px`` or ``mm``; n is taken from the first column."""
    if unit not in ("px", "mm"):
        raise ValueError(f"unit must be 'px' or 'mm', got {unit!r}")
    names = list(columns)
    first = columns[names[0]]
    header = ["task", "n"] + [f"{name} ({unit})" for name in names]
    rows = []
    for task, t in first.tasks.items():
        n = t.n if unit == "px" else t.n_mm
        values = []
        for name in names:
            tm = columns[name].tasks.get(task)
            values.append(_fmt(None if tm is None else (tm.mre_px if unit == "px" else tm.mre_mm)))
        rows.append([task, str(n)] + values)
    pick = (lambda r: (r.weighted_px, r.unweighted_px)) if unit == "px" else (lambda r: (r.weighted_mm, r.unweighted_mm))
    total = first.n if unit == "px" else sum(t.n_mm for t in first.tasks.values())
    n_tasks = sum(1 for t in first.tasks.values() if (t.n if unit == "px" else t.n_mm))
    rows.append(["weighted", str(total)] + [_fmt(pick(columns[n])[0]) for n in names])
    rows.append(["unweighted", str(n_tasks)] + [_fmt(pick(columns[n])[1]) for n in names])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate([header] + rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if j == 0 or j == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_dict(columns: Mapping[str, MREReport]) -> dict[str, Any]:
    """The JSON form of a table: each column's full report, keyed by column name."""
    return {name: report.to_dict() for name, report in columns.items()}
