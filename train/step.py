"""The jitted teacher train step and the validation predict step. Batches are
task-homogeneous, keypoints padded to ``Kmax``; `jax.lax.switch` on the task index runs
only the batch's head, in one program for every task.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.vitpose import soft_argmax
from sonichu_jax.train.guard import keep_if_finite
from sonichu_jax.train.objectives import L1, check_loss
from sonichu_jax.train.optim import GroupedAdamW, get_group, with_groups
from sonichu_jax.train.state import TrainState, merge_model

BATCH_KEYS = ("image", "keypoints", "valid", "task_id", "has_label", "is_pseudo")


def max_keypoints(cfg: ModelConfig) -> int:
    return max(t.num_keypoints for t in cfg.tasks)


def head_branches(graphdef, cfg: ModelConfig, run: Callable) -> list[Callable]:
    """One `lax.switch` branch per task: the model merged from the operands, returning
    ``(run(model, features, task), non-parameter state)``; ``run`` pads keypoints to Kmax."""

    def branch(task: str):
        def apply(params, rest, x):
            model = merge_model(graphdef, cfg, params, rest)
            return run(model, x, task), nnx.state(model, nnx.Not(nnx.Param))

        return apply

    return [branch(t) for t in cfg.task_names]


def head_outputs(cfg: ModelConfig) -> Callable:
    """The training branch: ``heatmaps`` (B, h, w, Kmax) float32, zero on padded keypoints,
    and their soft-argmax ``coords`` (B, Kmax, 2)."""
    kmax = max_keypoints(cfg)

    def run(model, features, task):
        hm = model.head_heatmaps(features, task)
        pad = kmax - hm.shape[-1]
        coords = jnp.pad(soft_argmax(hm, cfg.softargmax_beta), ((0, 0), (0, pad), (0, 0)))
        return {"coords": coords, "heatmaps": jnp.pad(hm, ((0, 0), (0, 0), (0, 0), (0, pad)))}

    return run


def make_train_step(graphdef, cfg: ModelConfig, optimizer: GroupedAdamW, freeze_backbone: bool, objective=None):
    """``step(state, batch[, aux]) -> (state, metrics)``, state to be donated; ``objective``
    (default L1) computes the loss, ``aux`` is what its ``targets`` read."""
    objective = objective or L1()
    trainable = optimizer.groups
    frozen = [g for g in (("backbone",),) if g not in trainable]

    branches = head_branches(graphdef, cfg, head_outputs(cfg))

    def loss_fn(train_params, frozen_params, state: TrainState, batch, targets):
        params = _join(train_params, frozen_params, trainable, frozen)
        model = merge_model(graphdef, cfg, params, state.rest)
        feats = model.feature_map(batch["image"])
        if freeze_backbone:  # no backward pass through it: XLA drops it
            feats = jax.lax.stop_gradient(feats)
        task_index = batch["task_id"][0]
        outputs, rest = jax.lax.switch(task_index, branches, params, state.rest, feats)
        if getattr(objective, "needs_features", False):
            outputs["features"] = feats
        loss, parts = objective.loss(outputs, batch, targets)
        check_loss(objective, loss, parts)
        return loss, (rest, parts)

    def step(state: TrainState, batch, aux=None) -> tuple[TrainState, dict]:
        targets = jax.lax.stop_gradient(objective.targets(batch, aux))
        train_params = with_groups(trainable, [get_group(state.params, g) for g in trainable])
        frozen_params = with_groups(frozen, [get_group(state.params, g) for g in frozen])
        (loss, (rest, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            train_params, frozen_params, state, batch, targets
        )
        task_index = batch["task_id"][0]
        active = {("heads", t): task_index == i for i, t in enumerate(cfg.task_names)}
        new_train, opt_state, metrics = optimizer.update(grads, state.opt_state, train_params, state.step, active)
        candidate = TrainState(
            step=state.step + 1,
            params=_join(new_train, frozen_params, trainable, frozen),
            rest=rest,
            opt_state=opt_state,
        )
        new_state, finite, param_norm = keep_if_finite(state, candidate, loss, metrics["grad_norm"])
        metrics.update(parts)
        metrics.update(loss=loss, param_norm=param_norm, finite=finite)
        return new_state, metrics

    return step


def _join(train_params: dict, frozen_params: dict, trainable: list, frozen: list) -> dict:
    groups = trainable + frozen
    values = [get_group(train_params, g) for g in trainable] + [get_group(frozen_params, g) for g in frozen]
    return with_groups(groups, values)


def make_predict_step(graphdef, cfg: ModelConfig, tta: bool):
    """``predict(params, rest, images, task_index) -> (V, B, Kmax, 2)`` normalised xy in
    eval mode: `SonichuModel.forward_views` with the backbone outside the switch."""
    kmax = max_keypoints(cfg)

    def run(model, feats, task):
        model.eval()
        views = model.decode_views(feats, task, tta)
        return jnp.pad(views, ((0, 0), (0, 0), (0, kmax - views.shape[2]), (0, 0)))

    branches = head_branches(graphdef, cfg, run)

    def predict(params, rest, images, task_index):
        model = merge_model(graphdef, cfg, params, rest)
        model.eval()
        if tta:
            images = jnp.concatenate([images, images[:, :, ::-1]])
        feats = model.feature_map(images)
        views, _ = jax.lax.switch(task_index, branches, params, rest, feats)
        return views

    return predict
