"""AdamW with warm-up + cosine, ViTPose layer-wise lr decay and a weight-decay mask, one
optax state per parameter group; a head group's update is gated on the batch's task, as
PyTorch leaves parameters without a gradient untouched (docs/training.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sonichu_jax.config import ModelConfig
from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import OptimConfig


def lr_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
    if not 0 <= optim.warmup_steps < total_steps:
        raise ConfigError(f"optim.warmup_steps={optim.warmup_steps} must be in [0, steps={total_steps})")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=optim.warmup_steps,
        decay_steps=total_steps,
        end_value=optim.lr * optim.min_lr_ratio,
    )


def path_keys(path) -> tuple:
    """Plain keys of a pytree path, dropping the Variable's trailing ``.value``."""
    out = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            out.append(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            out.append(entry.idx)
    return tuple(out)


def decays(path: tuple, ndim: int) -> bool:
    """mmpose's rule: no weight decay for 1-D parameters, biases and position tables."""
    return ndim >= 2 and path[-1] != "bias" and "pos_embed" not in path


def backbone_layer_id(path: tuple, depth: int) -> int:
    """ViTPose layer id in the backbone: patch embedding and position table 0, block i
    i + 1, what follows the blocks depth + 1."""
    if path[0] in ("patch_embed", "pos_embed"):
        return 0
    if path[0] == "blocks":
        return int(path[1]) + 1
    return depth + 1


def layer_scale(layer_id: int, depth: int, decay: float) -> float:
    num_layers = depth + 2
    return decay ** (num_layers - layer_id - 1)


def group_transform(optim: OptimConfig, group: tuple, params, cfg: ModelConfig) -> optax.GradientTransformation:
    """AdamW direction (without the learning rate) for one parameter group."""
    with_path = jax.tree_util.tree_map_with_path
    mask = with_path(lambda p, x: decays(path_keys(p), x.ndim), params)
    parts = [
        optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
        optax.add_decayed_weights(optim.weight_decay, mask=mask),
    ]
    if group == ("backbone",) and optim.layer_decay != 1.0:
        # State paths are absolute ("backbone", "blocks", 3, ...): drop the group prefix.
        scales = with_path(
            lambda p, x: layer_scale(backbone_layer_id(path_keys(p)[1:], cfg.depth), cfg.depth, optim.layer_decay),
            params,
        )
        parts.append(optax.stateless(lambda updates, params: jax.tree.map(lambda u, s: u * s, updates, scales)))
    return optax.chain(*parts)


def get_group(tree, group: tuple):
    for key in group:
        tree = tree[key]
    return tree


def with_groups(groups: list[tuple], values: list) -> dict:
    """Nested dict with ``values[i]`` at ``groups[i]``."""
    out: dict = {}
    for group, value in zip(groups, values):
        node = out
        for key in group[:-1]:
            node = node.setdefault(key, {})
        node[group[-1]] = value
    return out


class GroupedAdamW:
    """AdamW over the trainable parameter groups (paths such as ``("heads", "HC")``),
    one optax state per group."""

    def __init__(self, optim: OptimConfig, cfg: ModelConfig, total_steps: int, groups: list[tuple], params):
        self.optim = optim
        self.groups = groups
        self.schedule = lr_schedule(optim, total_steps)
        self.txs = [group_transform(optim, g, get_group(params, g), cfg) for g in groups]

    def init(self, params) -> dict:
        return with_groups(self.groups, [tx.init(get_group(params, g)) for g, tx in zip(self.groups, self.txs)])

    def update(self, grads, opt_state, params, step: jax.Array, active: dict[tuple, jax.Array]) -> tuple[Any, Any, dict]:
        """(params, opt_state, metrics) after one step; ``active[group]`` (traced) gates a
        group whose gradient is structurally zero on this batch."""
        grad_norm = optax.tree.norm(grads)
        if self.optim.clip_norm > 0:
            factor = jnp.minimum(1.0, self.optim.clip_norm / (grad_norm + 1e-6))
            grads = jax.tree.map(lambda g: g * factor, grads)
        lr = self.schedule(step)
        new_params, new_states, updates = [], [], []
        for group, tx in zip(self.groups, self.txs):
            p, s = get_group(params, group), get_group(opt_state, group)
            direction, s_new = tx.update(get_group(grads, group), s, p)
            u = jax.tree.map(lambda d: -lr * d, direction)
            if group in active:
                on = active[group]
                u = jax.tree.map(lambda x: jnp.where(on, x, jnp.zeros_like(x)), u)
                s_new = jax.tree.map(lambda a, b: jnp.where(on, a, b), s_new, s)
            new_params.append(optax.apply_updates(p, u))
            new_states.append(s_new)
            updates.append(u)
        metrics = {"grad_norm": grad_norm, "update_norm": optax.tree.norm(updates), "lr": lr}
        return with_groups(self.groups, new_params), with_groups(self.groups, new_states), metrics
