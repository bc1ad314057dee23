"""Training objectives (docs/research.md): ``targets(batch, aux)`` inside the step, outside
the gradient, and ``loss(outputs, batch, targets) -> (scalar, metrics)`` on ``coords``,
``heatmaps`` and, with ``needs_features``, ``features``. ``loss.kind`` names a built-in
(`KINDS`) or ``module:Factory``, called as ``Factory(loss_config, model_config)``.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np

from sonichu_jax.config import ModelConfig
from sonichu_jax.errors import ConfigError


def l1_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean absolute error per normalised coordinate over the weighted keypoints."""
    err = jnp.abs(pred - target).sum(-1)
    return (err * weight).sum() / jnp.maximum(2.0 * weight.sum(), 1.0)


def label_weight(batch) -> jax.Array:
    """(B, Kmax): the labelled (real or pseudo) keypoints of the batch."""
    return batch["valid"] * batch["has_label"][:, None]


def task_keypoints(cfg: ModelConfig, batch) -> jax.Array:
    """The batch's task's keypoint count (batches are task-homogeneous)."""
    return jnp.asarray(np.asarray([t.num_keypoints for t in cfg.tasks], np.int32))[batch["task_id"][0]]


def gaussian_heatmaps(keypoints: jax.Array, size: tuple[int, int], sigma: float) -> jax.Array:
    """(B, K, 2) normalised xy -> (B, h, w, K) Gaussians of peak 1, std ``sigma`` pixels,
    centred where the decoders read xy (pixel i's centre at (i + 0.5) / w)."""
    h, w = size
    cx = keypoints[..., 0] * w - 0.5
    cy = keypoints[..., 1] * h - 0.5
    dx = jnp.arange(w, dtype=jnp.float32)[None, :, None] - cx[:, None, :]  # (B, w, K)
    dy = jnp.arange(h, dtype=jnp.float32)[None, :, None] - cy[:, None, :]  # (B, h, K)
    return jnp.exp(-(dy[:, :, None] ** 2 + dx[:, None] ** 2) / (2.0 * sigma**2))


def heatmap_mse(heatmaps: jax.Array, target: jax.Array, weight: jax.Array, task_k: jax.Array) -> jax.Array:
    """mmpose's ``KeypointMSELoss`` with target weights, averaged over B x K x h x w (K: the task's)."""
    b, h, w, _ = heatmaps.shape
    sq = jnp.square(heatmaps - target) * weight[:, None, None, :]
    return sq.sum() / (b * h * w * task_k.astype(jnp.float32))


class L1:
    """L1 on the normalised soft-argmax coordinates of the labelled keypoints."""

    needs_features = False

    def __init__(self, loss=None, model: ModelConfig | None = None):
        pass

    def targets(self, batch, aux):
        return None

    def loss(self, outputs, batch, targets):
        return l1_loss(outputs["coords"], batch["keypoints"], label_weight(batch)), {}


class HeatmapMSE(L1):
    """Heatmap regression towards Gaussians at the labels (ViTPose's loss), ``loss.sigma``
    heatmap pixels wide; ``l1_weight`` > 0 adds the L1 term (``l1+heatmap_mse``)."""

    def __init__(self, loss, model: ModelConfig, l1_weight: float = 0.0, heatmap_weight: float = 1.0):
        self.sigma, self.cfg = loss.sigma, model
        self.l1_weight, self.heatmap_weight = l1_weight, heatmap_weight

    def loss(self, outputs, batch, targets):  # the Gaussians drawn here, where the heatmap size is known
        hm = outputs["heatmaps"]
        gauss = jax.lax.stop_gradient(gaussian_heatmaps(batch["keypoints"], hm.shape[1:3], self.sigma))
        mse = heatmap_mse(hm, gauss, label_weight(batch), task_keypoints(self.cfg, batch))
        if not self.l1_weight:
            return mse, {}
        l1, _ = super().loss(outputs, batch, targets)
        return self.l1_weight * l1 + self.heatmap_weight * mse, {"loss_l1": l1, "loss_heatmap": mse}


KINDS = {
    "l1": L1,
    "heatmap_mse": HeatmapMSE,
    "l1+heatmap_mse": lambda loss, model: HeatmapMSE(loss, model, 1.0, loss.heatmap_weight),
}


def objective_factory(kind: str):
    """The factory ``loss.kind`` names: a built-in or ``module:attribute``; ConfigError otherwise."""
    if kind in KINDS:
        return KINDS[kind]
    module, sep, attr = kind.partition(":")
    builtins = ", ".join(KINDS)
    if not (sep and module and attr):
        raise ConfigError(f"loss.kind {kind!r} is neither a built-in ({builtins}) nor module:Name")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"loss.kind {kind!r} does not resolve ({exc}); built-ins: {builtins}") from None
    return factory


def make_objective(loss, model: ModelConfig):
    return objective_factory(loss.kind)(loss, model)


def check_loss(objective, loss, metrics) -> None:
    """A user objective must return a scalar loss and scalar metrics (one line otherwise)."""
    name = type(objective).__name__
    if jnp.shape(loss) != ():
        raise ConfigError(f"objective {name} returned a loss of shape {jnp.shape(loss)}; it must be a scalar")
    for key, value in metrics.items():
        if jnp.shape(value) != ():
            raise ConfigError(f"objective {name} returned metric {key!r} of shape {jnp.shape(value)}; "
                              "metrics must be scalars")
