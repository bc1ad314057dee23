"""The stages by config class, and the program a plan compiles: the stage's own `build`
over the plan's mesh (it allocates nothing), plus the step's model FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sonichu_jax.errors import ConfigError
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.distill import CARD_TEACHERS, DistillStage
from sonichu_jax.train.loop import Stage
from sonichu_jax.train.pretrain import PretrainStage
from sonichu_jax.train.schedule import epoch_fields, in_steps
from sonichu_jax.train.supervised import SupervisedStage

STAGES = (SupervisedStage, DistillStage, PretrainStage)


@dataclass
class StageProgram:
    stage: str  # the training command: pretrain, train-teacher or distill
    run: Any  # what `abstract_run` returns: .step, .state, .batch, .aux (a distillation's teachers),
    # .config (schedule in steps), .lower()
    model_flops: float  # per step, whole global batch (see flops.py)
    examples: int | None  # the training set a schedule in epochs was counted over; None: in steps
    examples_assumed: bool  # ``examples`` is the card's training set (`Stage.card_examples`), not the user's


def stage_for(config, teachers: int = CARD_TEACHERS) -> Stage:
    """The stage that runs ``config`` (a distillation with ``teachers`` abstract teachers)."""
    for kind in STAGES:
        if type(config) is kind.config_class:
            return kind(config, teachers=teachers) if kind is DistillStage else kind(config)
    raise ConfigError(f"a {type(config).__name__} is not a training config; one of "
                      f"{', '.join(s.config_class.__name__ for s in STAGES)} is")


def abstract_run(config, mesh, examples: int | None = None, teachers: int = CARD_TEACHERS):
    """``config``'s program on ``mesh`` without its data and without allocating, what a run
    on that mesh executes: ``abstract_run(config, mesh).lower().compile()``. ``examples``
    (the training set's size) turns a schedule in epochs into steps."""
    return _abstract(stage_for(config, teachers), mesh, examples)


def _abstract(stage: Stage, mesh, examples: int | None):
    stage.config = in_steps(stage.config.validate(), examples)
    mesh_lib.check_batch(stage.config.data.batch_size, mesh)
    return stage.build(mesh)


def stage_program(config, mesh, teachers: int = CARD_TEACHERS, examples: int | None = None) -> StageProgram:
    """The program of ``config``'s stage on ``mesh``. A schedule in epochs is counted over
    ``examples``, or without it over the card's training set."""
    stage = stage_for(config, teachers)
    assumed = examples is None and bool(epoch_fields(config))
    examples = stage.card_examples if assumed else examples
    run = _abstract(stage, mesh, examples)
    counted = examples if epoch_fields(config) else None
    return StageProgram(stage.name, run, stage.model_flops(run), counted, assumed)
