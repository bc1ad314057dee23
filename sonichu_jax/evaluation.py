"""The evaluation core: predict -> ensemble -> score -> table, for `sonichu-jax evaluate`,
the run report, the demo, validation during training and the recipe study.

Mean radial error (MRE, the FM_UIA metric): per image, the mean distance in original
pixels over its valid keypoints; per task, the mean over its images; weighted, the mean
over all images; unweighted, the mean of the per-task means. The same in mm where the
pixel spacing is known. Ensembles combine models coordinate-wise (median by default).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sonichu_jax.config import ModelConfig, TaskSpec
from sonichu_jax.data.records import LoadReport, Record
from sonichu_jax.data.sources import load_source
from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.inference import predict_pixels
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.prediction_csv import load_predictions, match_predictions
from sonichu_jax.preprocess import SonichuPreprocessor


def keypoint_errors(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(..., K, 2) predictions and targets -> (..., K) distances, NaN where not valid."""
    dist = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(target, np.float64), axis=-1)
    return np.where(np.asarray(valid, bool), dist, np.nan)


def _mean_valid(errors: np.ndarray) -> np.ndarray:
    """(..., K) distances, NaN where not valid -> (...) their mean (NaN if none is valid)."""
    count = np.sum(~np.isnan(errors), axis=-1)
    return np.where(count > 0, np.nansum(errors, axis=-1) / np.maximum(count, 1), np.nan)


def image_mre(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(..., K, 2) -> (...) mean error over each image's valid keypoints (NaN if none)."""
    return _mean_valid(keypoint_errors(pred, target, valid))


ENSEMBLE_METHODS = ("median", "mean")


def combine(stacked, method: str = "median", xp=np):
    """Coordinate-wise combination over the leading (model) axis: (M, ...) -> (...).
    ``xp`` is numpy or jax.numpy, so that distillation applies the same rule inside jit."""
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(f"ensemble method must be one of {', '.join(ENSEMBLE_METHODS)}, got {method!r}")
    return xp.median(stacked, axis=0) if method == "median" else xp.mean(stacked, axis=0)


def ensemble(predictions: Sequence[np.ndarray], method: str = "median") -> np.ndarray:
    """Combine M models' predictions of the same shape, e.g. (N, K, 2), coordinate-wise."""
    return combine(np.stack([np.asarray(p, np.float64) for p in predictions]), method)


def ensemble_images(columns: Sequence[Mapping[int, np.ndarray]], method: str = "median") -> dict[int, np.ndarray]:
    """Several models' per-image (K_i, 2) predictions, keyed by image index -> their
    combination on the images every model predicted, in the first model's order."""
    common = [i for i in columns[0] if all(i in c for c in columns[1:])]
    return {i: ensemble([c[i] for c in columns], method).astype(np.float32) for i in common}


def sort_by_task(records: list[Record], tasks: Sequence[TaskSpec]) -> list[Record]:
    """In place, stable: the task table's order, then the data's order."""
    rank = {spec.name: i for i, spec in enumerate(tasks)}
    records.sort(key=lambda r: rank[r.task])
    return records


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
                name: {"n": t.n, "mre_px": _num(t.mre_px), "per_keypoint_px": [_num(v) for v in t.per_keypoint_px],
                       "n_mm": t.n_mm, "mre_mm": _num(t.mre_mm)}
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
    """MRE of one model over images, each with its own task: ``targets[i]``,
    ``predictions[i]`` (K_i, 2) in original pixels, ``valid[i]`` (K_i,). Tasks appear in
    first-seen order."""
    n = len(tasks)
    if not (len(targets) == len(valid) == len(predictions) == n):
        raise ValueError("tasks, targets, valid and predictions must have the same length")
    spacing = [None] * n if spacing_mm is None else list(spacing_mm)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    errors = {task: keypoint_errors(*(np.stack([seq[i] for i in idx]) for seq in (predictions, targets, valid)))
              for task, idx in by_task.items()}
    scales = {task: np.array([np.nan if spacing[i] is None else spacing[i] for i in idx], np.float64)
              for task, idx in by_task.items()}
    return report_from_errors(errors, scales)


def score(records: Sequence[Record], predictions: Sequence[np.ndarray]) -> MREReport:
    """The MRE report of ``predictions`` (K_i, 2 original pixels, one per record)."""
    return compute_mre([r.task for r in records], [r.keypoints for r in records], [r.valid for r in records],
                       predictions, [r.spacing_mm for r in records])


def report_from_errors(
    errors: Mapping[str, np.ndarray], spacing_mm: Mapping[str, np.ndarray] | None = None
) -> MREReport:
    """The report from per-keypoint distances: ``errors[task]`` is (N, K) in original
    pixels, NaN where a keypoint is not valid (an image without any valid keypoint is
    not counted); ``spacing_mm[task]`` (N,) the pixel size, NaN where unknown."""
    report = MREReport()
    all_px, all_mm = [], []
    for task, err in errors.items():
        per_image = _mean_valid(err)
        counted = np.isfinite(per_image)
        per_image = per_image[counted]
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


@dataclass
class TableRow:
    label: str  # a task, "weighted" or "unweighted"
    n: int  # images (tasks, for the unweighted row)
    values: list[float | None]  # one MRE per column; None where a column lacks the task


def table_rows(columns: Mapping[str, MREReport], unit: str = "px", tasks: Sequence[str] | None = None) -> list[TableRow]:
    """The card's table as numbers: one row per task (``tasks``, else every column's in
    first-seen order; n the largest column's), then the weighted and unweighted rows."""
    if unit not in ("px", "mm"):
        raise ValueError(f"unit must be 'px' or 'mm', got {unit!r}")
    px = unit == "px"
    tasks = tasks or list(dict.fromkeys(t for report in columns.values() for t in report.tasks))
    rows = []
    for task in tasks:
        found = [r.tasks.get(task) for r in columns.values()]
        rows.append(TableRow(task, max((t.n if px else t.n_mm) for t in found if t),
                             [None if t is None else (t.mre_px if px else t.mre_mm) for t in found]))
    reports = list(columns.values())
    rows.append(TableRow("weighted", sum(r.n for r in rows),
                         [r.weighted_px if px else r.weighted_mm for r in reports]))
    rows.append(TableRow("unweighted", sum(1 for r in rows[:-1] if r.n),
                         [r.unweighted_px if px else r.unweighted_mm for r in reports]))
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def format_table(columns: Mapping[str, MREReport], unit: str = "px") -> str:
    """The card's layout as text: one row per task (n, then MRE per column), then the
    weighted and unweighted rows. ``unit`` is ``px`` or ``mm``."""
    rows = table_rows(columns, unit)
    header = ["task", "n"] + [f"{name} ({unit})" for name in columns]
    cells = [header] + [[row.label, str(row.n)] + [_fmt(v) for v in row.values] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if j == 0 or j == len(cells) - 3:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_dict(columns: Mapping[str, MREReport]) -> dict[str, Any]:
    """The JSON form of a table: each column's full report, keyed by column name."""
    return {name: report.to_dict() for name, report in columns.items()}


def image_errors(records: Sequence[Record], predictions: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """One JSON entry per record: image, task, id, predicted keypoints (px), each keypoint's
    error (px; null where the label is masked) and their mean; the same in mm where the
    pixel spacing is known."""
    out = []
    for record, pred in zip(records, predictions):
        errors = keypoint_errors(pred, record.keypoints, record.valid)
        mean = _num(_mean_valid(errors))
        entry = {
            "image": os.fspath(record.image) if isinstance(record.image, (str, os.PathLike)) else record.source_id,
            "task": record.task,
            "id": record.source_id,
            "prediction_px": np.asarray(pred, np.float64).round(4).tolist(),
            "error_px": [_num(v) for v in errors.ravel()],
            "mre_px": mean,
        }
        if record.spacing_mm is not None:
            entry["error_mm"] = [_num(v) for v in (errors * record.spacing_mm).ravel()]
            entry["mre_mm"] = None if mean is None else mean * record.spacing_mm
        out.append(entry)
    return out


def predict_records(
    model: SonichuModel,
    prep: SonichuPreprocessor,
    records: Sequence[Record],
    *,
    tta: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> list[np.ndarray]:
    """(K_i, 2) pixel predictions per record, batched task by task (one compilation per task)."""
    by_task: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_task.setdefault(record.task, []).append(i)
    preds: list = [None] * len(records)
    for task, idx in by_task.items():
        pixels = predict_pixels(model, prep, [records[i].image for i in idx], task,
                                tta=tta, batch_size=batch_size, progress=progress)
        for i, p in zip(idx, pixels):
            preds[i] = np.asarray(p, np.float32)
    return preds


def predict_columns(
    models: Mapping[str, tuple[SonichuModel, SonichuPreprocessor]],
    records: Sequence[Record],
    *,
    tta: bool = True,
    batch_size: int = 8,
    ensemble_method: str | None = "median",
    progress: bool = True,
) -> dict[str, list[np.ndarray]]:
    """Each model's (K_i, 2) pixel predictions of every record, plus ``"<method> ensemble"``
    when there are two models or more."""
    columns = {
        name: predict_records(model, prep, records, tta=tta, batch_size=batch_size, progress=progress)
        for name, (model, prep) in models.items()
    }
    if ensemble_method and len(columns) >= 2:
        combined = ensemble_images([dict(enumerate(preds)) for preds in columns.values()], ensemble_method)
        columns[f"{ensemble_method} ensemble"] = list(combined.values())
    return columns


def evaluate_models(
    models: Mapping[str, tuple[SonichuModel, SonichuPreprocessor]],
    records: Sequence[Record],
    **options: Any,
) -> dict[str, MREReport]:
    """One MRE report per model (and their ensemble); ``options`` as `predict_columns`."""
    return {name: score(records, preds) for name, preds in predict_columns(models, records, **options).items()}


def load_model(path: str) -> tuple[SonichuModel, SonichuPreprocessor]:
    """A model directory's model and its preprocessor."""
    model = SonichuModel.from_pretrained(path)
    return model, SonichuPreprocessor.from_pretrained(path, model.cfg)


@dataclass
class Evaluation:
    """What `evaluate` measured: one MRE report per column (a model, the models' ensemble,
    a prediction file) and, per column, the records it scored with its predictions."""

    data: str
    models: dict[str, str]  # column name -> model directory
    predictions: dict[str, str]  # column name -> prediction CSV
    tta: bool
    ensemble: str | None  # how the models' keypoints were combined; None: fewer than two models
    load_report: LoadReport
    columns: dict[str, MREReport]
    scored: dict[str, tuple[list[Record], list[np.ndarray]]]

    def to_dict(self) -> dict:
        return {
            "data": os.path.abspath(self.data),
            "models": {name: os.path.abspath(path) for name, path in self.models.items()},
            "predictions": {name: os.path.abspath(path) for name, path in self.predictions.items()},
            "tta": self.tta,
            "ensemble": self.ensemble,
            "load_report": self.load_report.to_dict(),
            "results": table_dict(self.columns),
            "per_image": {name: image_errors(recs, preds) for name, (recs, preds) in self.scored.items()},
        }


def evaluate(
    data: str,
    models: Sequence[str] = (),
    predictions: Sequence[str] = (),
    *,
    tasks: Sequence[str] | None = None,
    tta: bool = True,
    batch_size: int = 8,
    ensemble_method: str = "median",
    strict: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Evaluation:
    """Score model directories and prediction CSVs (`sonichu_jax.prediction_csv`) on the
    labelled records of ``data`` (restricted to ``tasks``), in the task table's order.

    What can be checked without weights is checked first (task tables, prediction files,
    the data). Labelled images a prediction file has no prediction for are left out of
    every column (an error when ``strict``), so that all columns score the same images."""
    models, predictions = list(models), list(predictions)
    if not models and not predictions:
        raise InputError("nothing to evaluate: give a model directory or a prediction file")
    configs = [ModelConfig.load(path) for path in models]
    task_table(configs, models)
    prediction_files = {path: load_predictions(path) for path in predictions}
    tasks_evaluated = _evaluated_tasks(configs, prediction_files, models)
    for task in tasks or ():
        for cfg in configs:
            cfg.task(task)  # UnknownTaskError naming the valid tasks

    source = load_source(data, tasks=tasks_evaluated, strict=strict)
    records = [r for r in source if r.has_label and (not tasks or r.task in tasks)]
    unlabelled = sum(1 for r in source if not r.has_label)
    if unlabelled:
        warn(f"{unlabelled} unlabelled records not evaluated")
    for task in {r.task for r in records}:  # the first model's table filtered the source
        for cfg in configs[1:]:
            cfg.task(task)
    names = column_names(models + predictions)
    model_names, file_names = names[:len(models)], names[len(models):]
    records, predicted, missing = match_predictions(records, dict(zip(file_names, prediction_files.values())))
    for name, path in zip(file_names, predictions):
        if missing[name]:
            message = f"{path}: no prediction for {missing[name]} labelled images; they are not scored"
            if strict:
                raise InputError(message)
            warn(message)
    if not records:
        raise InputError(f"no labelled records to evaluate in {data}" + (f" for tasks {', '.join(tasks)}" if tasks else ""))
    sort_by_task(records, tasks_evaluated)

    loaded = {name: load_model(path) for name, path in zip(model_names, models)}
    scored = {name: (records, preds) for name, preds in predict_columns(
        loaded, records, tta=tta, batch_size=batch_size, ensemble_method=ensemble_method, progress=progress).items()}
    for name, (spec, _) in zip(file_names, prediction_files.values()):
        scored[name] = ([r for r in records if r.task == spec.name], predicted[name])
    return Evaluation(
        data=data,
        models=dict(zip(model_names, models)),
        predictions=dict(zip(file_names, predictions)),
        tta=tta,
        ensemble=ensemble_method if len(models) >= 2 else None,
        load_report=source.report,
        columns={name: score(recs, preds) for name, (recs, preds) in scored.items()},
        scored=scored,
    )


def column_names(paths: Sequence[str]) -> list[str]:
    """Folder names of models, file stems of prediction files; numbered if they clash."""
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    names = [n[:-4] if n.lower().endswith(".csv") else n for n in names]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def task_table(configs: Sequence[ModelConfig], names: Sequence[str]) -> tuple[TaskSpec, ...]:
    """Every task of the models (``names``: how to call them), in first-seen order;
    InputError when two of them give a task different keypoint counts."""
    table: dict[str, tuple[TaskSpec, str]] = {}
    for cfg, name in zip(configs, names):
        for spec in cfg.tasks:
            known, where = table.setdefault(spec.name, (spec, name))
            if known.num_keypoints != spec.num_keypoints:
                raise InputError(f"{name}: task {spec.name} has {spec.num_keypoints} keypoints, "
                                 f"{where} has {known.num_keypoints}")
    return tuple(spec for spec, _ in table.values())


def _evaluated_tasks(configs: Sequence[ModelConfig], prediction_files: Mapping[str, tuple[TaskSpec, Any]],
                     model_paths: Sequence[str]) -> tuple[TaskSpec, ...]:
    """The first model's task table, or the prediction files' tasks; every prediction
    file's task must fit it."""
    table = list(configs[0].tasks) if configs else []
    for path, (spec, _) in prediction_files.items():
        known = {t.name: t for t in table}
        if spec.name not in known:
            if configs:
                raise InputError(f"{path}: task {spec.name} is not one of {model_paths[0]}'s tasks")
            table.append(spec)
        elif known[spec.name].num_keypoints != spec.num_keypoints:
            raise InputError(f"{path}: task {spec.name} has {spec.num_keypoints} keypoints, "
                             f"expected {known[spec.name].num_keypoints}")
    return tuple(table)
