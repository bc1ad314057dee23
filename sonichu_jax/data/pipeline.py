"""grain input pipelines: task-homogeneous training batches with static shapes, and an
eval pipeline that yields every record once. The batch keys, the block mixture and the
task weights: docs/training.md, "Input batches"; I-JEPA frames: `data.ijepa_pipeline`."""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import grain
import numpy as np

from sonichu_jax.config import TaskSpec
from sonichu_jax.data.augment import AugmentConfig, augment_sample, resize_sample
from sonichu_jax.data.records import Record
from sonichu_jax.errors import InputError
from sonichu_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image

WEIGHTINGS = ("proportional", "balanced", "capped")
_SCALE = (1.0 / IMAGENET_STD).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def to_wire(x: np.ndarray) -> np.ndarray:
    """A float [0, 1] gray (H, W) or RGB (H, W, 3) image -> uint8 (H, W, 3), rounded: the
    form training batches travel in (docs/training.md, "Input batches")."""
    u = cv2.convertScaleAbs(x, alpha=255.0)
    return cv2.cvtColor(u, cv2.COLOR_GRAY2RGB) if u.ndim == 2 else u


def device_normalize(images):
    """uint8 (..., 3) training images -> float32 ImageNet-normalised, on the device (jit it)."""
    import jax.numpy as jnp  # the module stays JAX-free: grain's worker processes import it

    return images.astype(jnp.float32) * jnp.asarray(_SCALE / 255) + jnp.asarray(_OFFSET)


def normalize_planes(x: np.ndarray) -> np.ndarray:
    """`sonichu_jax.preprocess.normalize` of a gray (H, W) or RGB (H, W, 3) [0, 1] image ->
    (H, W, 3), plane by plane (numpy broadcasting over a trailing 3 is ten times slower)."""
    planes = [x] * 3 if x.ndim == 2 else cv2.split(x)
    return cv2.merge([p * _SCALE[c] + _OFFSET[c] for c, p in enumerate(planes)])


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that shapes a pipeline's output besides the data and the task table."""

    batch_size: int = 32
    image_size: tuple[int, int] = (256, 256)  # (height, width), the model's input
    seed: int = 0
    weighting: str = "proportional"
    cap: int | None = None  # records per task for `capped`
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: resize only
    block_batches: int = 1000  # size of a mixing block, in batches
    num_threads: int = 2  # reader threads per process (OpenCV releases the GIL)
    prefetch_buffer_size: int = 8  # batches buffered per process
    num_workers: int = 0  # grain worker processes (mp_prefetch); 0 = in-process

    def __post_init__(self):
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.weighting == "capped" and (self.cap is None or self.cap < 1):
            raise InputError("weighting 'capped' needs a positive cap")
        if self.block_batches < 1:
            raise InputError(f"block_batches must be >= 1, got {self.block_batches}")


class ExampleLoader:
    """Decode, augment (or just resize) and normalise one record into the example dict.

    A plain picklable class rather than a closure so that grain worker processes can
    receive it. ``wire``: the image as `to_wire` uint8 instead of normalised float32.
    """

    def __init__(self, tasks: Sequence[TaskSpec], image_size: tuple[int, int], augment: AugmentConfig | None,
                 wire: bool = False):
        self.wire = wire
        self.task_ids = {t.name: i for i, t in enumerate(tasks)}
        self.flip_perms = {t.name: t.flip_perm for t in tasks}
        self.kmax = max(t.num_keypoints for t in tasks)
        self.out_size = (int(image_size[1]), int(image_size[0]))  # (width, height)
        self.augment = augment

    def __call__(self, item: tuple[int, Record], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        index, record = item
        image = load_image(record.image)
        h, w = image.shape[:2]
        kps, valid = record.keypoints, record.valid
        if self.augment is None:
            x, kps = resize_sample(image, kps, self.out_size)
        else:
            x, kps, valid = augment_sample(
                image, kps, valid, rng, self.augment, self.out_size, self.flip_perms.get(record.task)
            )
        out_kps = np.zeros((self.kmax, 2), np.float32)
        out_valid = np.zeros((self.kmax,), np.float32)
        if kps is not None:
            k = kps.shape[0]
            # masked points are zeroed: a NaN there would survive a 0 loss weight (NaN * 0)
            out_kps[:k] = np.where(valid[:, None], kps / np.asarray(self.out_size, np.float32), 0.0)
            out_valid[:k] = valid
        return {
            "image": to_wire(x) if self.wire else normalize_planes(x),
            "keypoints": out_kps,
            "valid": out_valid,
            "task_id": np.int32(self.task_ids.get(record.task, 0)),
            "has_label": np.float32(kps is not None),
            "is_pseudo": np.float32(record.is_pseudo),
            "mask": np.float32(1.0),
            "orig_size": np.array([w, h], np.float32),
            "index": np.int32(index),
        }

    def padding(self, task_id: int) -> dict[str, np.ndarray]:
        """An all-zero example (mask 0) that fills an eval pipeline's last batch."""
        W, H = self.out_size
        shapes = {"image": (H, W, 3), "keypoints": (self.kmax, 2), "valid": (self.kmax,), "orig_size": (2,)}
        zeros = {k: np.zeros(shapes.get(k, ()), np.float32) for k in ("image", "keypoints", "valid", "task_id",
                                                                     "has_label", "is_pseudo", "mask", "orig_size")}
        return {**zeros, "task_id": np.int32(task_id), "index": np.int32(-1)}


def task_weights(counts: Sequence[int], weighting: str, cap: int | None = None) -> np.ndarray:
    """Sampling probability of each task's batches (tasks with no records get 0)."""
    counts = np.asarray(counts, np.float64)
    if weighting == "proportional":
        raw = counts
    elif weighting == "balanced":
        raw = (counts > 0).astype(np.float64)
    elif weighting == "capped":
        if cap is None or cap < 1:
            raise InputError("weighting 'capped' needs a positive cap")
        raw = np.minimum(counts, cap)
    else:
        raise InputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if raw.sum() <= 0:
        raise InputError("no labelled records to sample from")
    return raw / raw.sum()


def block_counts(weights: Sequence[float], block: int) -> np.ndarray:
    """Batches per task in one block: largest-remainder rounding of ``weights * block``,
    at least one for every task with a positive weight."""
    weights = np.asarray(weights, np.float64)
    positive = weights > 0
    if block < positive.sum():
        block = int(positive.sum())
    exact = weights * block
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: block - counts.sum()]] += 1
    counts[positive & (counts == 0)] = 1
    return counts


class BlockMixture(grain.transforms.DatasetSelectionMap):
    """Mixture index -> (task slot, batch index within that task's stream): block ``b`` holds
    ``counts[t]`` batches of task ``t`` in the order ``default_rng([seed, b])`` draws, its
    ``r``-th being the stream's batch ``b * counts[t] + r`` (in order, without gaps)."""

    def __init__(self, counts: Sequence[int], seed: int):
        self.counts = tuple(int(c) for c in counts)
        self.block = sum(self.counts)
        self.seed = int(seed)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> tuple[int, int]:
        b, j = divmod(int(index), self.block)
        order, rank = _block_layout(self.counts, self.seed, b)
        t = int(order[j])
        return t, b * self.counts[t] + int(rank[j])


@functools.lru_cache(maxsize=8)
def _block_layout(counts: tuple[int, ...], seed: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Block ``b``'s task slots in order, and each one's rank among its task's slots."""
    order = np.random.default_rng([seed, b]).permutation(np.repeat(np.arange(len(counts)), counts))
    rank = np.empty_like(order)
    for t in range(len(counts)):
        where = np.flatnonzero(order == t)
        rank[where] = np.arange(len(where))
    return order, rank


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # as in device_normalize: no JAX in grain's worker processes

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise InputError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def _group_by_task(records: Sequence[Record], tasks: Sequence[TaskSpec]) -> list[list[tuple[int, Record]]]:
    slots = {t.name: i for i, t in enumerate(tasks)}
    groups: list[list[tuple[int, Record]]] = [[] for _ in tasks]
    stray: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.task not in slots:
            stray[str(record.task)] = stray.get(str(record.task), 0) + 1
            continue
        groups[slots[record.task]].append((i, record))
    if stray:
        raise InputError(
            "records for tasks the pipeline was not configured with: "
            + ", ".join(f"{k} ({v})" for k, v in stray.items())
            + f"; configured tasks: {', '.join(slots)}"
        )
    return groups


class EpochShuffle(grain.MapDataset):
    """``parent`` repeated without end, each epoch in its own seeded order (one permutation
    per epoch, cached): cheaper than grain's ``shuffle().repeat()`` on small shards (README,
    "Benchmarks")."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed, self._order = int(seed), (-1, None)

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(int(index), len(self._parent))
        order = self._order  # one read: reader threads may replace it meanwhile
        if order[0] != epoch:
            order = self._order = (epoch, np.random.default_rng([self._seed, epoch]).permutation(len(self._parent)))
        return self._parent[int(order[1][i])]


def finish_pipeline(ds: grain.MapDataset, config: PipelineConfig) -> grain.IterDataset:
    """The common tail of every pipeline: reader threads and prefetch, then grain worker
    processes when ``config.num_workers`` asks for them."""
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch_buffer_size)
    )
    if config.num_workers > 0:
        # grain's worker start-up reads absl flags; outside an absl app nobody parsed them
        # (grain 0.2.18 then raises UnparsedFlagAccessError), so accept the defaults.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers),
                            worker_init_fn=_one_cv2_thread)
    return it


def _one_cv2_thread(worker_index: int, worker_count: int) -> None:
    """Workers are the parallelism: OpenCV's own pool would take every core in each one."""
    cv2.setNumThreads(1)


def make_train_pipeline(
    records: Sequence[Record],
    tasks: Sequence[TaskSpec],
    config: PipelineConfig = PipelineConfig(),
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Infinite, shuffled, augmented, task-homogeneous batches (uint8 images) of labelled
    ``records`` for the task table ``tasks``; this host takes ``[process_index::process_count]``
    of every task (defaults: ``jax.process_index()`` / ``jax.process_count()``)."""
    tasks = tuple(tasks)
    pi, pc = _process(process_index, process_count)
    groups = _group_by_task(records, tasks)
    for slot, group in enumerate(groups):
        unlabelled = [r.source_id for _, r in group if not r.has_label]
        if unlabelled:
            raise InputError(f"task {tasks[slot].name}: {len(unlabelled)} unlabelled records, e.g. {unlabelled[0]!r}")
        if 0 < len(group) < pc:
            raise InputError(
                f"task {tasks[slot].name} has {len(group)} records, fewer than the {pc} processes sharing it"
            )
    # Weights from the global counts so that every host draws the same task sequence.
    weights = task_weights([len(g) for g in groups], config.weighting, config.cap)
    counts = block_counts(weights, config.block_batches)
    loader = ExampleLoader(tasks, config.image_size, config.augment, wire=True)
    streams, slots = [], []
    for slot, group in enumerate(groups):
        if not group:
            continue
        seed = int(np.random.SeedSequence([config.seed, slot]).generate_state(1)[0])
        stream = (
            EpochShuffle(grain.MapDataset.source(group)[pi::pc], seed)
            .seed(seed)
            .random_map(loader)
            .batch(config.batch_size, drop_remainder=True)
        )
        streams.append(stream)
        slots.append(slot)
    mixture = BlockMixture(counts[slots], config.seed)
    ds = grain.MapDataset.select_from_datasets(streams, mixture)
    return finish_pipeline(ds, config)


def make_eval_pipeline(
    records: Sequence[Record],
    tasks: Sequence[TaskSpec],
    config: PipelineConfig = PipelineConfig(),
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Every record exactly once (of this host's shard), resized, not augmented, task by
    task in the configured task order, in batches of ``config.batch_size``.

    Each task's last batch is padded with ``mask == 0`` examples; every host yields the
    same number of batches per task, so multi-host eval steps stay in lockstep.
    """
    tasks = tuple(tasks)
    pi, pc = _process(process_index, process_count)
    groups = _group_by_task(records, tasks)
    loader = ExampleLoader(tasks, config.image_size, None)
    B = config.batch_size
    parts = []
    for slot, group in enumerate(groups):
        if not group:
            continue
        shard = group[pi::pc]
        per_host = math.ceil(len(group) / pc)  # the largest shard
        padded = math.ceil(per_host / B) * B
        parts.append(grain.MapDataset.range(padded).map(_EvalItem(shard, loader, slot)).batch(B))
    if not parts:
        raise InputError("no records for the configured tasks")
    return finish_pipeline(grain.MapDataset.concatenate(parts), config)


class _EvalItem:
    """Position -> example, or padding past the end of the shard."""

    def __init__(self, shard: list[tuple[int, Record]], loader: ExampleLoader, slot: int):
        self.shard, self.loader, self.slot = shard, loader, slot

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        return self.loader(self.shard[i]) if i < len(self.shard) else self.loader.padding(self.slot)
