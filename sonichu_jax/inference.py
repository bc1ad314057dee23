"""Batched prediction over many images, every batch padded to one size, so that
`SonichuModel.predict` compiles once per (task, tta) whatever the last batch holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from sonichu_jax.errors import InputError
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.preprocess import SonichuPreprocessor, find_images


def predict_pixels(
    model: SonichuModel,
    prep: SonichuPreprocessor,
    images: Sequence,
    task: str,
    *,
    tta: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Images (paths or arrays) -> (N, K, 2) keypoints in original-image pixels; InputError
    naming the first unreadable image (`iter_predictions` skips and reports them)."""
    results = []
    for item in iter_predictions(model, prep, images, task, tta=tta, batch_size=batch_size, progress=progress):
        if item.error:
            raise InputError(item.error)
        results.append(item.pixels)
    if not results:
        return np.zeros((0, model.cfg.task(task).num_keypoints, 2), np.float32)
    return np.stack(results)


@dataclass(slots=True)
class Prediction:
    index: int
    name: str
    pixels: np.ndarray | None = None  # (K, 2) float32 in original pixels
    normalised: np.ndarray | None = None  # (K, 2) in [0, 1]
    orig_size: tuple[int, int] | None = None  # (width, height)
    error: str | None = None  # message when the image could not be read


@dataclass(slots=True)
class Embedding:
    index: int
    name: str
    features: np.ndarray | None = None  # (D,) or (gh, gw, D) float32
    error: str | None = None  # message when the image could not be read


def _name(image, index: int) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"array[{index}]"


def _batches(prep: SonichuPreprocessor, images: Sequence, batch_size: int, desc: str, progress: bool, forward):
    """``(index, name, row, (orig_w, orig_h), error)`` per input, in order: ``row`` is the
    image's row of ``forward(pixel_values)``, run a batch at a time on the readable images
    padded to ``batch_size`` (one shape for every pass); an unreadable image has ``error``."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress)
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            loaded, arrays, results = [], [], {}
            for index, image in enumerate(chunk, start=start):
                try:
                    array, orig_h, orig_w = prep.preprocess_one(image)
                except InputError as exc:
                    results[index] = (index, _name(image, index), None, None, str(exc))
                    continue
                loaded.append((index, (orig_w, orig_h)))
                arrays.append(array)
            if arrays:  # padded with copies of the last image: realistic values, never NaN
                batch = np.stack(arrays + arrays[-1:] * (batch_size - len(arrays)))
                rows = np.asarray(forward(batch))
                for (index, size), row in zip(loaded, rows):
                    results[index] = (index, _name(images[index], index), row, size, None)
            yield from (results[i] for i in sorted(results))
            bar.update(len(chunk))
    finally:
        bar.close()


def iter_predictions(
    model: SonichuModel,
    prep: SonichuPreprocessor,
    images: Sequence,
    task: str,
    *,
    tta: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[Prediction]:
    """Yield one `Prediction` per input, in order; unreadable images yield an error
    instead of stopping the run. Preprocessing is done a batch at a time."""
    model.cfg.task(task)
    forward = lambda pixel_values: model.predict(pixel_values, task, tta=tta)  # noqa: E731
    for index, name, xy, size, error in _batches(prep, images, batch_size, f"predict {task}", progress, forward):
        yield Prediction(index, name, error=error) if error else Prediction(
            index, name, xy * np.array(size, np.float32), xy, size)


def iter_embeddings(
    model: SonichuModel,
    prep: SonichuPreprocessor,
    images: Sequence,
    *,
    pool: str = "mean",
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[Embedding]:
    """Yield one `Embedding` (see `SonichuModel.embed`) per input, in order; unreadable
    images yield an error instead of stopping the run. One compilation for all batches."""
    forward = lambda pixel_values: model.embed(pixel_values, pool)  # noqa: E731
    for index, name, row, _, error in _batches(prep, images, batch_size, "embed", progress, forward):
        yield Embedding(index, name, row, error)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files and directories (searched recursively for images) -> (image paths, missing)."""
    files, missing = [], []
    for item in inputs:
        if os.path.isdir(item):
            files += find_images(item)
        elif os.path.isfile(item):
            files.append(item)
        else:
            missing.append(item)
    return files, missing


def relative_names(paths: Sequence[str]) -> list[str]:
    """Each path relative to the deepest folder holding them all, so that ``a/x.png`` and
    ``b/x.png`` keep distinct names when their outputs are written into one folder."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.relpath(p, root) for p in absolute]
