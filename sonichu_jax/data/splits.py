"""The card's fair validation split: original labels only, 15 %, seed 42.

The split is stratified per task: within each task, the original-label records are
ordered by ``source_id`` (so the result does not depend on the order files were listed or
concatenated in), permuted with ``numpy.random.default_rng([seed, crc32(task)])``, and the
first ``round(fraction * n)`` go to validation. Per task rather than global because a
global 15 % draw over a data set where one task is 60 % of the records can leave a small
task with almost no validation images, which makes its per-task MRE and the unweighted
mean noisy; per-task rounding keeps every task at 15 % (and at least one validation record
once a task has two). Pseudo-labelled records always go to training.
"""

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
