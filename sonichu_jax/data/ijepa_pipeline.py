"""The I-JEPA input pipeline: this host's frames -> `EpochShuffle` -> random resized crop
(+ flip, uint8 `to_wire`) -> batch -> masks keyed by the batch index, so the iterator
state restores the exact next images and masks. Unreadable frames: docs/ijepa.md."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import grain
import numpy as np
from tqdm import tqdm

from sonichu_jax.data.augment import to_unit_float
from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
from sonichu_jax.data.pipeline import EpochShuffle, PipelineConfig, finish_pipeline, to_wire
from sonichu_jax.data.records import Record
from sonichu_jax.errors import InputError
from sonichu_jax.preprocess import load_image

CROP_TRIES = 10  # torchvision's attempts before the central-crop fallback
MAX_DRAWS = 16  # frames tried for one slot; at 1 % bad frames all fail with probability 1e-32


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
    """Record -> ``{"image": uint8 (H, W, 3)}`` (`to_wire`), for grain's
    ``random_map`` (a plain picklable class, so worker processes can receive it)."""

    image_size: tuple[int, int]  # (height, width) of the model input
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False

    def __call__(self, record: Record, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = load_image(record.image)
        top, left, h, w = crop_box(rng, image.shape[0], image.shape[1], self.scale, self.ratio)
        x = to_unit_float(image[top : top + h, left : left + w])
        out_h, out_w = self.image_size
        # INTER_AREA when shrinking: the antialiased resize torchvision now applies
        interp = cv2.INTER_AREA if h > out_h and w > out_w else cv2.INTER_LINEAR
        x = cv2.resize(x, (out_w, out_h), interpolation=interp)
        if self.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        return {"image": to_wire(np.ascontiguousarray(x))}


@dataclass(frozen=True)
class FrameDraw:
    """A frame index -> ``{"image", "skipped", "bad"}`` for grain's ``random_map``: the crop
    of that frame or, when it cannot be read, of another drawn with the same generator (up
    to `MAX_DRAWS`); ``skipped`` counts the failures, ``bad`` lists them (-1 padded)."""

    records: Sequence[Record]
    crop: RandomResizedCrop

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bad = np.full(MAX_DRAWS, -1, np.int32)
        for draw in range(MAX_DRAWS):
            try:
                out = self.crop(self.records[index], rng)
            except (InputError, cv2.error):
                bad[draw] = index
                index = int(rng.integers(len(self.records)))
                continue
            return {**out, "skipped": np.int32(draw), "bad": bad}
        return {"image": np.zeros((*self.crop.image_size, 3), np.uint8), "skipped": np.int32(MAX_DRAWS), "bad": bad}


class BadFrameCheck:
    """The main-process end of the pipeline: says once per file which frames could not be
    read, and stops the run (`InputError`) when more than ``max_fraction`` of the host's
    frames have failed or a slot found no readable frame. Drops the ``bad`` indices."""

    def __init__(self, records: Sequence[Record], max_fraction: float, log: Callable[[str], None] | None = None):
        self.records, self.max_fraction = records, max_fraction
        self.log = log or _warn
        self.seen: set[int] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bad = batch["bad"]
        for index in sorted(set(bad[bad >= 0].tolist()) - self.seen):
            self.seen.add(index)
            self.log(f"skipping a frame that cannot be read: {self.records[index].image} "
                     f"({len(self.seen)} of {len(self.records)} frames so far)")
        exhausted = bool((batch["skipped"] >= MAX_DRAWS).any())
        if exhausted or len(self.seen) > self.max_fraction * len(self.records):
            examples = ", ".join(str(self.records[i].image) for i in sorted(self.seen)[:3])
            why = f"no readable frame in {MAX_DRAWS} draws" if exhausted else \
                f"more than data.max_bad_fraction={self.max_fraction:g} allows"
            raise InputError(f"{len(self.seen)} of {len(self.records)} frames cannot be read ({why}), e.g. "
                             f"{examples}; fix or remove them, or raise data.max_bad_fraction")
        return {k: v for k, v in batch.items() if k != "bad"}


def _warn(text: str) -> None:
    tqdm.write(text, file=sys.stderr)  # through an open progress bar


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
    max_bad_fraction: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> grain.IterDataset:
    """Infinite batches ``{"image", "context_idx", "context_valid", "target_idx",
    "target_valid", "skipped"}`` of this host's ``batch_size`` frames (its slice of the
    records). Frames that cannot be read are replaced and reported through ``log``
    (default: stderr) while at most ``max_bad_fraction`` of them fail (module doc)."""
    if len(records) < process_count:
        raise InputError(f"{len(records)} frames, fewer than the {process_count} processes sharing them")
    mine = list(records)[process_index::process_count]
    ds = (
        EpochShuffle(grain.MapDataset.range(len(mine)), seed)
        .seed(seed)
        .random_map(FrameDraw(mine, crop))
        .batch(batch_size, drop_remainder=True)
        .map_with_index(sampler)
    )
    it = finish_pipeline(ds, PipelineConfig(batch_size=batch_size, image_size=crop.image_size, seed=seed,
                                            num_workers=num_workers))
    return it.map(BadFrameCheck(mine, max_bad_fraction, log))
