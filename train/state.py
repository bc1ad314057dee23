"""The train state: parameters grouped (backbone, shared trunk, one group per task head,
since a head moves only on its task's batches), the rest of the model state, optimiser
state, step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train.optim import get_group, with_groups


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: dict  # {"backbone": State, ["trunk": State,] "heads": {task: State}}
    rest: nnx.State  # everything that is not an nnx.Param: BatchNorm stats, fixed tables
    opt_state: dict  # per trainable group, same nesting as params


def param_groups(cfg: ModelConfig) -> list[tuple]:
    groups = [("backbone",)]
    if cfg.head_sharing == "shared_trunk":
        groups.append(("trunk",))
    return groups + [("heads", t) for t in cfg.task_names]


def split_model(model: SonichuModel) -> tuple[nnx.GraphDef, dict, nnx.State]:
    """(graphdef, grouped params, rest)."""
    groups = param_groups(model.cfg)
    in_group = [lambda path, v, g=g: isinstance(v, nnx.Param) and tuple(path[: len(g)]) == g for g in groups]
    graphdef, *parts = nnx.split(model, *in_group, ...)
    return graphdef, with_groups(groups, parts[:-1]), parts[-1]


def merge_model(graphdef: nnx.GraphDef, cfg: ModelConfig, params: dict, rest: nnx.State) -> SonichuModel:
    return nnx.merge(graphdef, *[get_group(params, g) for g in param_groups(cfg)], rest)


def trainable_groups(cfg: ModelConfig, freeze_backbone: bool) -> list[tuple]:
    return [g for g in param_groups(cfg) if not (freeze_backbone and g == ("backbone",))]


def fresh_state(model: SonichuModel, optimizer) -> TrainState:
    """Step 0 of ``model`` (switched to train mode) under ``optimizer`` (a `GroupedAdamW`):
    traceable, so it serves both `jax.eval_shape` and the jitted allocation."""
    model.train()
    _, params, rest = split_model(model)
    trainable = with_groups(optimizer.groups, [get_group(params, g) for g in optimizer.groups])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=optimizer.init(trainable))
