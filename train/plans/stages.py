"""The program a plan compiles: the training command's own builder for the config's stage
(`abstract_run` of `sonichu_jax.train.supervised`, `.distill` or `.ijepa`), over the plan's
mesh, plus the step's model FLOPs (flops.py). The builders allocate nothing, so this is
exactly the step, state shardings, batch and frozen inputs a run on that mesh executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sonichu_jax.train.plans import flops
from sonichu_jax.train.schedule import epoch_fields

# The training sets of the card's runs, the number a schedule in epochs is counted over
# when the plan is not told the size of the user's own: the card's 160,486 unlabelled
# frames for I-JEPA, and its 32,722 labelled and pseudo-labelled samples for the teachers
# and the student.
CARD_EXAMPLES = {"pretrain": 160_486, "train-teacher": 32_722, "distill": 32_722}


@dataclass
class StageProgram:
    stage: str  # the training command: pretrain, train-teacher or distill
    run: Any  # what `abstract_run` returns: .step, .state, .batch, .config (schedule in steps), .lower()
    teachers: tuple  # the abstract frozen step inputs (a distillation's stacked teachers), or ()
    model_flops: float  # per step, whole global batch (see flops.py)
    examples: int | None  # the training set a schedule in epochs was counted over; None: in steps
    examples_assumed: bool  # ``examples`` is the card's training set (CARD_EXAMPLES), not the user's


def stage_name(config) -> str:
    """The training command that runs ``config``."""
    from sonichu_jax.train.distill import DistillConfig
    from sonichu_jax.train.ijepa_config import IJEPAConfig

    if isinstance(config, IJEPAConfig):
        return "pretrain"
    return "distill" if isinstance(config, DistillConfig) else "train-teacher"


def stage_program(config, mesh, teachers: int = 5, examples: int | None = None) -> StageProgram:
    """The program of ``config``'s stage on ``mesh`` (a distillation with ``teachers``
    frozen teachers of the student's architecture). ``examples``, the training set's size,
    turns a schedule in epochs into steps; without it the card's training set does."""
    from sonichu_jax.train import distill, ijepa, supervised

    stage, batch = stage_name(config), config.data.batch_size
    assumed = examples is None and bool(epoch_fields(config))
    examples = CARD_EXAMPLES[stage] if assumed else examples
    counted = (examples if epoch_fields(config) else None, assumed)
    if stage == "pretrain":
        run = ijepa.abstract_run(config, mesh, examples)
        per_image = flops.ijepa_per_image(config.model, config.predictor.width, config.predictor.depth,
                                          run.sampler.context_len, config.masks.num_targets, run.sampler.target_len)
        return StageProgram(stage, run, (), per_image * batch, *counted)
    per_image = flops.supervised_per_image(config.model, config.optim.freeze_backbone)
    if stage == "train-teacher":
        return StageProgram(stage, supervised.abstract_run(config, mesh, examples), (), per_image * batch, *counted)
    run = distill.abstract_run(config, mesh, teachers, examples)
    per_image += flops.teachers_per_image(config.model, teachers, config.distill.teacher_tta)
    return StageProgram(stage, run, run.aux, per_image * batch, *counted)
