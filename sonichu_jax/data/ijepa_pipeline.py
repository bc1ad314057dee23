"""The I-JEPA input pipeline: unlabelled frames -> random resized crops -> batches with
static-shape multi-block masks.

``source -> [process_index::process_count] -> shuffle -> repeat -> random_map(crop)
-> batch(B) -> map_with_index(masks)``. The crop is the official (torchvision-style)
RandomResizedCrop, then an optional horizontal flip; gray frames are replicated to three
channels after the resize (three times less resize work). The masks are keyed by the
batch index, so the grain iterator state (``get_state``/``set_state``, orbax via
``grain.checkpoint``) restores the exact next images *and* masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import grain
import numpy as np

from sonichu_jax.data.augment import to_unit_float
from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
from sonichu_jax.data.pipeline import PipelineConfig, finish_pipeline
from sonichu_jax.data.records import Record
from sonichu_jax.errors import InputError
from sonichu_jax.preprocess import normalize, read_image

CROP_TRIES = 10  # torchvision's attempts before the central-crop fallback


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop of ``scale`` of the area and aspect ``ratio``
    (w / h, log-uniform), as torchvision's RandomResizedCrop draws it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # fallback: the whole frame, cut to the nearest allowed aspect, centred
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class RandomResizedCrop:
    """Record -> ``{"image": float32 (H, W, 3)}`` ImageNet-normalised, for grain's
    ``random_map`` (a plain picklable class, so worker processes can receive it)."""

    image_size: tuple[int, int]  # (height, width) of the model input
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False

    def __call__(self, record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = record.image if isinstance(record.image, np.ndarray) else read_image(record.image)
        x = to_unit_float(image)
        top, left, h, w = crop_box(rng, x.shape[0], x.shape[1], self.scale, self.ratio)
        out_h, out_w = self.image_size
        # INTER_AREA when shrinking: the antialiased resize torchvision now applies
        interp = cv2.INTER_AREA if h > out_h and w > out_w else cv2.INTER_LINEAR
        x = cv2.resize(x[top : top + h, left : left + w], (out_w, out_h), interpolation=interp)
        if self.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=2)
        return {"image": normalize(np.ascontiguousarray(x))}


def make_pretrain_pipeline(
    records: Sequence[Record],
    crop: RandomResizedCrop,
    sampler: MultiBlockMaskSampler,
    batch_size: int,
    seed: int,
    *,
    num_workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Infinite batches ``{"image", "context_idx", "context_valid", "target_idx",
    "target_valid"}`` of this host's ``batch_size`` frames (its slice of the records)."""
    if len(records) < process_count:
        raise InputError(f"{len(records)} frames, fewer than the {process_count} processes sharing them")
    ds = (
        grain.MapDataset.source(list(records))[process_index::process_count]
        .seed(seed)
        .shuffle()
        .repeat()
        .random_map(crop)
        .batch(batch_size, drop_remainder=True)
        .map_with_index(sampler)
    )
    return finish_pipeline(ds, PipelineConfig(batch_size=batch_size, image_size=crop.image_size, seed=seed,
                                      num_workers=num_workers))
