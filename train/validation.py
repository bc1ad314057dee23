"""Validation during training: keypoint distances in original pixels computed on the
device and returned replicated, turned into the MRE report on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sonichu_jax.config import ModelConfig
from sonichu_jax.evaluation import MREReport, report_from_errors
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.step import make_predict_step

EVAL_KEYS = ("image", "keypoints", "valid", "task_id", "mask", "orig_size")


def keypoint_distances(pred: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
    """((B, Kmax) distances in original pixels, (B, Kmax) counted): a keypoint counts when
    it is valid and its example is not eval padding."""
    scale = batch["orig_size"][:, None, :]
    dist = jnp.linalg.norm((pred - batch["keypoints"]) * scale, axis=-1)
    counted = (batch["valid"] > 0) & (batch["mask"][:, None] > 0)
    return jnp.where(counted, dist, 0.0), counted


def make_eval_step(graphdef, cfg: ModelConfig, mesh, tta: bool, state_shardings):
    predict = make_predict_step(graphdef, cfg, tta)

    def step(params, rest, batch):
        views = predict(params, rest, batch["image"], batch["task_id"][0])
        return keypoint_distances(views.mean(0), batch)

    return jax.jit(
        mesh_lib.on_mesh(step, mesh),
        in_shardings=(state_shardings.params, state_shardings.rest, mesh_lib.batch_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )


def validate(eval_step, state, batches, mesh, cfg: ModelConfig) -> MREReport:
    """MRE over an eval pipeline (every record once, task-homogeneous batches)."""
    rows: dict[str, list[np.ndarray]] = {}
    for local in batches:
        task = cfg.tasks[int(local["task_id"][0])]
        batch = mesh_lib.global_batch(mesh, {k: local[k] for k in EVAL_KEYS})
        dist, counted = jax.device_get(eval_step(state.params, state.rest, batch))
        k = task.num_keypoints
        rows.setdefault(task.name, []).append(np.where(counted[:, :k], dist[:, :k], np.nan))
    return report_from_errors({name: np.concatenate(r) for name, r in rows.items()})
