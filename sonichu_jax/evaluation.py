"""MRE of trained models (and their ensemble) on labelled records, in original pixels."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sonichu_jax.data.records import Record
from sonichu_jax.inference import predict_pixels
from sonichu_jax.metrics import MREReport, compute_mre, ensemble
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.preprocess import SonichuPreprocessor


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


def score(records: Sequence[Record], predictions: Sequence[np.ndarray]) -> MREReport:
    return compute_mre(
        [r.task for r in records], [r.keypoints for r in records], [r.valid for r in records], predictions,
        [r.spacing_mm for r in records],
    )


def evaluate_models(
    models: Mapping[str, tuple[SonichuModel, SonichuPreprocessor]],
    records: Sequence[Record],
    *,
    tta: bool = True,
    batch_size: int = 8,
    ensemble_method: str | None = "median",
    progress: bool = True,
) -> dict[str, MREReport]:
    """One MRE report per model, plus ``"<method> ensemble"`` (the coordinate-wise
    combination of all models' keypoints) when there are two models or more."""
    per_model = {
        name: predict_records(model, prep, records, tta=tta, batch_size=batch_size, progress=progress)
        for name, (model, prep) in models.items()
    }
    columns = {name: score(records, preds) for name, preds in per_model.items()}
    if ensemble_method and len(per_model) >= 2:
        stacked = list(per_model.values())
        combined = [ensemble([preds[i][None] for preds in stacked], ensemble_method)[0] for i in range(len(records))]
        columns[f"{ensemble_method} ensemble"] = score(records, combined)
    return columns
