"""The jitted teacher train step and the validation predict step.

Batches are task-homogeneous with static shapes: every task's keypoints are padded to
``Kmax`` and ``task_id`` says which head to run. `jax.lax.switch` on the task index
compiles all heads into one program but executes only the batch's head, so the step
compiles once for every task and a batch never pays for nine heads.

Under `jax.jit` with the batch sharded over the mesh, BatchNorm's batch mean and variance
are reductions over the *global* batch axis: XLA inserts the cross-device all-reduce, so
an 8-device step computes what a 1-device step does (tests/test_train_sharding.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.sonichu import unflip
from sonichu_jax.nn.vitpose import soft_argmax
from sonichu_jax.train.guard import keep_if_finite
from sonichu_jax.train.optim import GroupedAdamW, get_group, with_groups
from sonichu_jax.train.state import TrainState, merge_model

BATCH_KEYS = ("image", "keypoints", "valid", "task_id", "has_label", "is_pseudo")


def max_keypoints(cfg: ModelConfig) -> int:
    return max(t.num_keypoints for t in cfg.tasks)


def _pad_keypoints(coords: jax.Array, kmax: int) -> jax.Array:
    return jnp.pad(coords, ((0, 0), (0, kmax - coords.shape[1]), (0, 0)))


def head_branches(graphdef, cfg: ModelConfig, run: Callable) -> list[Callable]:
    """One `lax.switch` branch per task. Each branch merges the model from its operands
    (a branch must not close over traced state) and returns ``(coords padded to Kmax,
    non-parameter state)``: only the chosen head's BatchNorm statistics change."""
    kmax = max_keypoints(cfg)

    def branch(task: str):
        def apply(params, rest, x):
            model = merge_model(graphdef, cfg, params, rest)
            coords = run(model, x, task)
            return _pad_keypoints(coords, kmax), nnx.state(model, nnx.Not(nnx.Param))

        return apply

    return [branch(t) for t in cfg.task_names]


def l1_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean absolute error per normalised coordinate over the weighted keypoints."""
    err = jnp.abs(pred - target).sum(-1)
    return (err * weight).sum() / jnp.maximum(2.0 * weight.sum(), 1.0)


class Supervised:
    """The teacher objective: L1 on the real (non-pseudo or pseudo) labels of the batch.

    An objective supplies ``targets(batch, aux)`` (computed inside the step, outside the
    gradient: e.g. frozen teachers' predictions from ``aux``) and ``loss(pred, batch,
    targets) -> (loss, extra metrics)``.
    """

    def targets(self, batch, aux):
        return None

    def loss(self, pred, batch, targets):
        return l1_loss(pred, batch["keypoints"], batch["valid"] * batch["has_label"][:, None]), {}


def make_train_step(graphdef, cfg: ModelConfig, optimizer: GroupedAdamW, freeze_backbone: bool, objective=None):
    """``step(state, batch[, aux]) -> (state, metrics)``; jit it with ``donate_argnums=0``.

    ``objective`` defaults to `Supervised`; ``aux`` is whatever else the objective reads
    (the distillation step passes the frozen teachers).
    """
    objective = objective or Supervised()
    trainable = optimizer.groups
    frozen = [g for g in (("backbone",),) if g not in trainable]
    beta = cfg.softargmax_beta

    def features(model, images):
        x = model.feature_map(images)
        # A frozen backbone needs no backward pass; cut it so XLA drops it.
        return jax.lax.stop_gradient(x) if freeze_backbone else x

    branches = head_branches(graphdef, cfg, lambda m, f, task: soft_argmax(m.head_heatmaps(f, task), beta))

    def loss_fn(train_params, frozen_params, state: TrainState, batch, targets):
        params = _join(train_params, frozen_params, trainable, frozen)
        model = merge_model(graphdef, cfg, params, state.rest)
        feats = features(model, batch["image"])
        task_index = batch["task_id"][0]
        pred, rest = jax.lax.switch(task_index, branches, params, state.rest, feats)
        loss, parts = objective.loss(pred, batch, targets)
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
    eval mode (BatchNorm running statistics): V = 1 view, or 2 with flip TTA (the plain
    view, then the mirrored view mapped back to the original frame). The TTA prediction
    is their mean; their disagreement is the pseudo-label confidence.

    The backbone runs once, outside the switch (on the images and, with TTA, their
    mirror images as one batch), so the program holds one backbone and one copy per head.
    """
    beta = cfg.softargmax_beta

    def run(model, feats, task):
        model.eval()
        coords = soft_argmax(model.head_heatmaps(feats, task), beta)
        if not tta:
            return coords
        plain, mirrored = jnp.split(coords, 2)
        return jnp.concatenate([plain, unflip(mirrored, cfg.task(task).flip_perm)])

    branches = head_branches(graphdef, cfg, run)

    def predict(params, rest, images, task_index):
        model = merge_model(graphdef, cfg, params, rest)
        model.eval()
        if tta:
            images = jnp.concatenate([images, images[:, :, ::-1]])
        feats = model.feature_map(images)
        coords, _ = jax.lax.switch(task_index, branches, params, rest, feats)
        return coords.reshape(2 if tta else 1, -1, *coords.shape[1:])

    return predict


def compile_train_step(step_fn, state_shardings, batch_sharding, replicated, aux_shardings=None):
    """jit with donated state and explicit shardings: the state stays where it is.
    ``aux_shardings`` (e.g. the frozen teachers') adds a third, non-donated argument."""
    in_shardings = (state_shardings, batch_sharding)
    if aux_shardings is not None:
        in_shardings += (aux_shardings,)
    return jax.jit(
        step_fn,
        in_shardings=in_shardings,
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
