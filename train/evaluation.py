"""Validation during training: per-image errors on the device, the MRE table on the host.

Each eval batch's per-image MRE (mean keypoint distance in original pixels) is computed
inside the jitted step and returned replicated, so every process sees the whole global
batch's errors without gathering images or predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sonichu_jax.config import ModelConfig
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.step import make_predict_step

EVAL_KEYS = ("image", "keypoints", "valid", "task_id", "mask", "orig_size")


def per_image_error(pred: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(errors (B,), counted (B,)): mean pixel distance over an image's valid keypoints;
    images without a valid keypoint (and eval padding) are not counted."""
    scale = batch["orig_size"][:, None, :]
    dist = jnp.linalg.norm((pred - batch["keypoints"]) * scale, axis=-1)
    valid = batch["valid"]
    n = valid.sum(-1)
    err = (dist * valid).sum(-1) / jnp.maximum(n, 1.0)
    counted = (n > 0) & (batch["mask"] > 0)
    return jnp.where(counted, err, 0.0), counted


def make_eval_step(graphdef, cfg: ModelConfig, mesh, tta: bool, state_shardings):
    predict = make_predict_step(graphdef, cfg, tta)

    def step(params, rest, batch):
        views = predict(params, rest, batch["image"], batch["task_id"][0])
        return per_image_error(views.mean(0), batch)

    return jax.jit(
        step,
        in_shardings=(state_shardings.params, state_shardings.rest, mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )


@dataclass
class MreTable:
    tasks: tuple[str, ...]
    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, tasks: tuple[str, ...]) -> "MreTable":
        return cls(tasks, np.zeros(len(tasks)), np.zeros(len(tasks), np.int64))

    def add(self, task_index: int, errors: np.ndarray, counted: np.ndarray) -> None:
        self.sums[task_index] += float(errors[counted].sum())
        self.counts[task_index] += int(counted.sum())

    def per_task(self) -> dict[str, float]:
        return {t: float(s / c) for t, s, c in zip(self.tasks, self.sums, self.counts) if c}

    @property
    def weighted(self) -> float:
        """Mean over all validation images (the card's headline MRE)."""
        return float(self.sums.sum() / max(self.counts.sum(), 1))

    @property
    def unweighted(self) -> float:
        per = self.per_task()
        return float(np.mean(list(per.values()))) if per else float("nan")

    def render(self) -> str:
        lines = [f"{'task':<12} {'n':>6} {'MRE px':>9}"]
        for t, s, n in zip(self.tasks, self.sums, self.counts):
            if n:
                lines.append(f"{t:<12} {n:>6} {s / n:>9.2f}")
        lines.append(f"{'weighted':<12} {int(self.counts.sum()):>6} {self.weighted:>9.2f}")
        lines.append(f"{'unweighted':<12} {'':>6} {self.unweighted:>9.2f}")
        return "\n".join(lines)


def evaluate(eval_step, state, batches, mesh, tasks: tuple[str, ...]) -> MreTable:
    """MRE over an eval pipeline (every record once, task-homogeneous batches)."""
    table = MreTable.empty(tasks)
    for local in batches:
        task_index = int(local["task_id"][0])
        batch = mesh_lib.global_batch(mesh, {k: local[k] for k in EVAL_KEYS})
        errors, counted = jax.device_get(eval_step(state.params, state.rest, batch))
        table.add(task_index, np.asarray(errors), np.asarray(counted))
    return table
