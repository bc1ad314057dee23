"""The worst images of a model: label, prediction and error drawn on each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from sonichu_jax.data.records import Record
from sonichu_jax.errors import InputError
from sonichu_jax.overlay import draw_comparison
from sonichu_jax.report.scoring import Column

THUMBNAIL_PX = 224
JPEG_QUALITY = 88  # ultrasound speckle makes PNG tiles ~6x larger for no visible gain


@dataclass
class Tile:
    name: str  # the image file's name (or the record id of an in-memory image)
    task: str
    error_px: float
    error_mm: float | None
    jpeg: bytes


def _name(record: Record) -> str:
    return os.path.basename(record.image) if isinstance(record.image, str) else record.source_id


def worst_tiles(column: Column, records: Sequence[Record], task: str, n: int) -> list[Tile]:
    """The ``n`` images of ``task`` with the largest mean error, worst first."""
    candidates = [(e, i, p) for i, p, e in zip(column.indices, column.predictions, column.errors_px)
                  if records[i].task == task and np.isfinite(e)]
    candidates.sort(key=lambda c: -c[0])
    tiles = []
    for error, index, pred in candidates[:n]:
        record = records[index]
        canvas = draw_comparison(record.image, pred, record.keypoints, record.valid, task, size=THUMBNAIL_PX)
        ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError(f"cannot encode the overlay of {_name(record)}")
        mm = None if record.spacing_mm is None else float(error) * record.spacing_mm
        tiles.append(Tile(_name(record), task, float(error), mm, encoded.tobytes()))
    return tiles
