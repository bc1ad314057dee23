"""One adapter per training stage: the run's jitted step and its abstract arguments
(`jax.ShapeDtypeStruct`s carrying the run's `NamedSharding`s) over a given mesh, built
exactly as the training command builds them, with nothing allocated.

Each adapter returns a `StageProgram`; `plan.py` compiles it and reads the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.errors import ConfigError
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.plans import flops


@dataclass
class StageProgram:
    stage: str  # the training command: pretrain, train-teacher or distill
    jitted: Any  # the step as the training command jits it (shardings, donation)
    state: Any  # abstract train state with shardings
    batch: dict  # abstract global batch with shardings
    aux: Any  # abstract frozen step input (the teachers) or None
    model_flops: float  # per step, whole global batch (see flops.py)

    def args(self) -> tuple:
        return (self.state, self.batch) if self.aux is None else (self.state, self.batch, self.aux)


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _abstract_state(create):
    """Run a stage's ``create_state`` under `jax.eval_shape` (its jitted initialiser is
    traced, never run). ``create()`` returns (state, extras); returns (abstract state
    with the shardings ``create`` placed it in, extras)."""
    box = {}

    def build():
        state, box["extras"] = create()
        return state

    abstract = jax.eval_shape(build)
    return abstract, box["extras"]


def _batch(mesh, specs: dict[str, tuple[tuple[int, ...], Any]]) -> dict:
    sharding = mesh_lib.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in specs.items()}


# -- I-JEPA ----------------------------------------------------------------------------------
def ijepa_program(config, mesh) -> StageProgram:
    from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
    from sonichu_jax.train import ijepa

    def create():
        graphdef, state = ijepa.create_state(config, mesh)
        return state, graphdef

    state, graphdef = _abstract_state(create)
    state = _with_shardings(state, mesh_lib.state_shardings(mesh, state))
    sampler = MultiBlockMaskSampler(config.masks, config.model.grid)
    b, (h, w), m = config.data.batch_size, config.model.image_size, config.masks.num_targets
    batch = _batch(mesh, {
        "image": ((b, h, w, 3), jnp.float32),
        "context_idx": ((b, sampler.context_len), jnp.int32),
        "context_valid": ((b, sampler.context_len), jnp.bool_),
        "target_idx": ((b, m, sampler.target_len), jnp.int32),
        "target_valid": ((b, m, sampler.target_len), jnp.bool_),
    })
    jitted = ijepa.compile_step(ijepa.make_train_step(graphdef, config), state, mesh)
    per_image = flops.ijepa_per_image(config.model, config.predictor.width, config.predictor.depth,
                                      sampler.context_len, m, sampler.target_len)
    return StageProgram("pretrain", jitted, state, batch, None, per_image * b)


# -- teachers and the distilled student --------------------------------------------------------
def supervised_batch(config, mesh) -> dict:
    from sonichu_jax.train.step import max_keypoints

    b, (h, w), k = config.data.batch_size, config.model.image_size, max_keypoints(config.model)
    return _batch(mesh, {
        "image": ((b, h, w, 3), jnp.float32),
        "keypoints": ((b, k, 2), jnp.float32),
        "valid": ((b, k), jnp.float32),
        "task_id": ((b,), jnp.int32),
        "has_label": ((b,), jnp.float32),
        "is_pseudo": ((b,), jnp.float32),
    })


def abstract_teachers(cfg, num_teachers: int, mesh):
    """(graphdef, abstract stacked teachers with shardings) as `distill.stack_teachers`
    and `teacher_shardings` lay them out: every leaf on a leading teacher axis."""
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.distill import teacher_shardings
    from sonichu_jax.train.state import split_model

    model = nnx.eval_shape(lambda: SonichuModel(cfg, rngs=nnx.Rngs(0)))
    model.eval()
    graphdef, params, rest = split_model(model)
    stack = lambda x: jax.ShapeDtypeStruct((num_teachers, *x.shape), x.dtype)  # noqa: E731
    aux = {"params": jax.tree.map(stack, params), "rest": jax.tree.map(stack, rest)}
    return graphdef, _with_shardings(aux, teacher_shardings(mesh, aux))


def supervised_program(config, mesh, num_teachers: int = 0) -> StageProgram:
    """A teacher step, or with ``num_teachers`` > 0 the distillation step of ``config``
    (a `DistillConfig`). Weights start from scratch here: a checkpoint to start from
    (``init.path``) gives the same shapes and need not exist for a plan."""
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.optim import GroupedAdamW
    from sonichu_jax.train.state import create_state, trainable_groups
    from sonichu_jax.train.step import compile_train_step, make_train_step

    cfg, optim = config.model, config.optim
    groups = trainable_groups(cfg, optim.freeze_backbone)

    def create():
        graphdef, state, optimizer = create_state(
            lambda: SonichuModel(cfg, rngs=nnx.Rngs(config.seed)),
            lambda params: GroupedAdamW(optim, cfg, config.steps, groups, params), mesh)
        return state, (graphdef, optimizer)

    state, (graphdef, optimizer) = _abstract_state(create)
    shardings = mesh_lib.state_shardings(mesh, state)
    state = _with_shardings(state, shardings)
    objective, aux, aux_shardings, stage = None, None, None, "train-teacher"
    per_image = flops.supervised_per_image(cfg, optim.freeze_backbone)
    if num_teachers:
        from sonichu_jax.train.distill import Distillation

        if not hasattr(config, "distill"):
            raise ConfigError("a distillation plan needs a distillation config (configs/distill_*.py)")
        teacher_graphdef, aux = abstract_teachers(cfg, num_teachers, mesh)
        aux_shardings = jax.tree.map(lambda x: x.sharding, aux)
        objective = Distillation(teacher_graphdef, cfg, config.distill)
        per_image += flops.teachers_per_image(cfg, num_teachers, config.distill.teacher_tta)
        stage = "distill"
    step = make_train_step(graphdef, cfg, optimizer, optim.freeze_backbone, objective)
    jitted = compile_train_step(step, shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh),
                                aux_shardings)
    return StageProgram(stage, jitted, state, supervised_batch(config, mesh), aux,
                        per_image * config.data.batch_size)


def stage_program(config, mesh, num_teachers: int = 5) -> StageProgram:
    """The program of whichever stage ``config`` configures."""
    from sonichu_jax.train.distill import DistillConfig
    from sonichu_jax.train.ijepa_config import IJEPAConfig

    if isinstance(config, IJEPAConfig):
        return ijepa_program(config, mesh)
    if isinstance(config, DistillConfig):
        return supervised_program(config, mesh, num_teachers)
    return supervised_program(config, mesh)
