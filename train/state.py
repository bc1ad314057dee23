"""The train state: grouped parameters, the rest of the model state, optimiser state, step.

The model is split once with `nnx.split` into a static graphdef and array pytrees; the
step merges them back inside `jax.jit`. Parameters are grouped (backbone, shared trunk,
one group per task head) because heads are updated only on batches of their task, and a
frozen backbone is simply a group without an optimiser.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
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


def _group_filter(group: tuple):
    def accept(path, value) -> bool:
        return isinstance(value, nnx.Param) and tuple(path[: len(group)]) == group

    return accept


def split_model(model: SonichuModel) -> tuple[nnx.GraphDef, dict, nnx.State]:
    """(graphdef, grouped params, rest)."""
    groups = param_groups(model.cfg)
    graphdef, *parts = nnx.split(model, *[_group_filter(g) for g in groups], ...)
    return graphdef, with_groups(groups, parts[:-1]), parts[-1]


def merge_model(graphdef: nnx.GraphDef, cfg: ModelConfig, params: dict, rest: nnx.State) -> SonichuModel:
    return nnx.merge(graphdef, *[get_group(params, g) for g in param_groups(cfg)], rest)


def trainable_groups(cfg: ModelConfig, freeze_backbone: bool) -> list[tuple]:
    return [g for g in param_groups(cfg) if not (freeze_backbone and g == ("backbone",))]


def graphdef_for(cfg: ModelConfig) -> nnx.GraphDef:
    """The train-mode graphdef of a model of ``cfg``, without allocating it."""
    model = nnx.eval_shape(lambda: SonichuModel(cfg, rngs=nnx.Rngs(0)))
    model.train()
    return split_model(model)[0]


def create_state(
    make_model: Callable[..., SonichuModel],
    optimizer_for: Callable[[dict], Any],
    mesh: jax.sharding.Mesh,
    *model_args,
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Build the train state directly into its shardings (nothing is materialised on one
    device first): shapes come from `jax.eval_shape`, then one jitted initialiser writes
    every array where the mesh wants it. Returns (graphdef, state, optimizer).

    ``make_model(*model_args)`` must be traceable (``SonichuModel(cfg, rngs=nnx.Rngs(seed))``,
    or `nnx.merge` of loaded weights passed in ``model_args``, which keeps them arguments
    rather than constants baked into the program); ``optimizer_for(params)`` builds the
    optimiser from the (abstract) grouped params.
    """
    holder = {}

    def init(*args) -> TrainState:
        model = make_model(*args)
        model.train()
        graphdef, params, rest = split_model(model)
        holder["graphdef"] = graphdef
        if "optimizer" not in holder:
            holder["optimizer"] = optimizer_for(params)
        optimizer = holder["optimizer"]
        trainable = with_groups(optimizer.groups, [get_group(params, g) for g in optimizer.groups])
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=optimizer.init(trainable)
        )

    abstract = jax.eval_shape(init, *model_args)
    shardings = state_shardings(mesh, abstract)
    state = jax.jit(init, out_shardings=shardings)(*model_args)
    return holder["graphdef"], state, holder["optimizer"]


def state_shardings(mesh: jax.sharding.Mesh, abstract: TrainState) -> TrainState:
    return mesh_lib.state_shardings(mesh, abstract)


def abstract_with_shardings(state_or_abstract, shardings):
    """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_abstract, shardings
    )
