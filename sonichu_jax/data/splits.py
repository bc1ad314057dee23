"""The card's fair validation split: original labels only, 15 %, seed 42, stratified per
task (why and how: docs/training.md, "Input batches")."""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from sonichu_jax.data.records import Record

CARD_SEED = 42
CARD_VAL_FRACTION = 0.15


def fair_split(
    records: Sequence[Record], fraction: float = CARD_VAL_FRACTION, seed: int = CARD_SEED
) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) into ``records``, both sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    by_task: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if record.has_label and not record.is_pseudo:
            by_task.setdefault(str(record.task), []).append(i)
    val: list[int] = []
    for task, indices in sorted(by_task.items()):
        indices = sorted(indices, key=lambda i: (records[i].source_id, i))
        n_val = int(round(fraction * len(indices)))
        if fraction > 0 and n_val == 0 and len(indices) >= 2:
            n_val = 1
        order = np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(len(indices))
        val.extend(indices[j] for j in order[:n_val])
    val_set = set(val)
    train = [i for i in range(len(records)) if i not in val_set]
    return train, sorted(val)
