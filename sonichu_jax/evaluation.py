"""MRE of trained models, prediction files and their ensemble on labelled records, in
original pixels: the library behind `sonichu-jax evaluate`, the demo's table and the
run report."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sonichu_jax.config import ModelConfig, TaskSpec
from sonichu_jax.data.records import LoadReport, Record
from sonichu_jax.errors import InputError, UnknownTaskError
from sonichu_jax.inference import predict_pixels
from sonichu_jax.metrics import MREReport, compute_mre, ensemble, table_dict
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.preprocess import SonichuPreprocessor
from sonichu_jax.prediction_csv import image_errors, load_predictions, match_predictions


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
    (their coordinate-wise combination) when there are two models or more."""
    columns = {
        name: predict_records(model, prep, records, tta=tta, batch_size=batch_size, progress=progress)
        for name, (model, prep) in models.items()
    }
    if ensemble_method and len(columns) >= 2:
        stacked = list(columns.values())
        columns[f"{ensemble_method} ensemble"] = [
            ensemble([preds[i][None] for preds in stacked], ensemble_method)[0].astype(np.float32)
            for i in range(len(records))
        ]
    return columns


def score(records: Sequence[Record], predictions: Sequence[np.ndarray]) -> MREReport:
    return compute_mre(
        [r.task for r in records], [r.keypoints for r in records], [r.valid for r in records], predictions,
        [r.spacing_mm for r in records],
    )


def evaluate_models(
    models: Mapping[str, tuple[SonichuModel, SonichuPreprocessor]],
    records: Sequence[Record],
    **options: Any,
) -> dict[str, MREReport]:
    """One MRE report per model (and their ensemble); ``options`` as `predict_columns`."""
    return {name: score(records, preds) for name, preds in predict_columns(models, records, **options).items()}


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


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


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
    warn: Callable[[str], None] = _warn,
) -> Evaluation:
    """Score model directories and prediction CSVs (`sonichu_jax.prediction_csv`) on the labelled
    records of ``data`` (restricted to ``tasks``), in the card's task order.

    Everything that can be checked without weights is checked first: the models' task
    tables agree, every prediction file's task fits, the data loads. Labelled images a
    prediction file has no prediction for are left out of every column (an error when
    ``strict``), so that all columns score the same images."""
    from sonichu_jax.data.sources import load_source

    models, predictions = list(models), list(predictions)
    if not models and not predictions:
        raise InputError("nothing to evaluate: give a model directory or a prediction file")
    configs = [ModelConfig.load(path) for path in models]
    _check_keypoints(models, configs)
    prediction_files = {path: load_predictions(path) for path in predictions}
    task_table = _task_table(configs, prediction_files, models)
    for task in tasks or ():
        for cfg in configs:
            if task not in cfg.task_names:
                raise UnknownTaskError(task, cfg.task_names)

    source = load_source(data, tasks=task_table, strict=strict)
    records = [r for r in source if r.has_label and (not tasks or r.task in tasks)]
    unlabelled = sum(1 for r in source if not r.has_label)
    if unlabelled:
        warn(f"{unlabelled} unlabelled records not evaluated")
    for task in {r.task for r in records}:  # the first model's table filtered the source
        for cfg in configs[1:]:
            if task not in cfg.task_names:
                raise UnknownTaskError(task, cfg.task_names)
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
    rank = {spec.name: i for i, spec in enumerate(task_table)}
    records.sort(key=lambda r: rank[r.task])  # stable: the card's task order, then file order

    loaded = {name: _model_and_preprocessor(path) for name, path in zip(model_names, models)}
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


def _model_and_preprocessor(path: str) -> tuple[SonichuModel, SonichuPreprocessor]:
    model = SonichuModel.from_pretrained(path)
    return model, SonichuPreprocessor.from_pretrained(path, model.cfg)


def column_names(paths: Sequence[str]) -> list[str]:
    """Folder names of models, file stems of prediction files; numbered if they clash."""
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    names = [n[:-4] if n.lower().endswith(".csv") else n for n in names]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def _check_keypoints(paths: Sequence[str], configs: Sequence[ModelConfig]) -> None:
    """Every model's tasks have the first model's keypoint counts."""
    for path, cfg in zip(paths[1:], configs[1:]):
        for spec in configs[0].tasks:
            if spec.name in cfg.task_names and cfg.task(spec.name).num_keypoints != spec.num_keypoints:
                raise InputError(f"{path}: task {spec.name} has {cfg.task(spec.name).num_keypoints} keypoints, "
                                 f"{paths[0]} has {spec.num_keypoints}")


def _task_table(configs: Sequence[ModelConfig], prediction_files: Mapping[str, tuple[TaskSpec, Any]],
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
