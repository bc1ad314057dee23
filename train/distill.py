"""Distillation of a teacher ensemble into one student (stage 3 of the card's recipe):
the frozen teachers are a step input (stacked on a leading axis, sharded like the
student) and their coordinate-wise median the target of an L1 term beside the real
labels' (docs/recipe.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sonichu_jax.checkpoint import abstract_model
from sonichu_jax.config import COMPUTE_FIELDS, ModelConfig
from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.evaluation import ENSEMBLE_METHODS, combine
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import TeacherConfig, replace_path, require, with_absolute_path
from sonichu_jax.train.loop import RunResult, run
from sonichu_jax.train.metrics_log import MetricsSink
from sonichu_jax.train.state import split_model
from sonichu_jax.train.objectives import L1, l1_loss, task_keypoints
from sonichu_jax.train.step import make_predict_step
from sonichu_jax.train import flops
from sonichu_jax.train.supervised import SupervisedStage

CARD_TEACHERS = 5  # R1, R2, R3, Selective, r3capped


@dataclass(frozen=True)
class DistillSettings:
    teacher_weight: float = 0.5  # the card: loss = loss_real + 0.5 * loss_teacher
    real_weight: float = 1.0
    pseudo_as_real: bool = False  # count pseudo-labels as real labels in loss_real
    reduce: str = "median"  # coordinate-wise median (the card) or mean of the teachers
    teacher_tta: bool = False  # teachers predict with flip TTA (2x their cost)
    teachers: tuple[str, ...] = ()  # the teachers' directories; the run stores them absolute

    def __post_init__(self):
        require(self.reduce in ENSEMBLE_METHODS, "distill.reduce", self.reduce, f"one of {ENSEMBLE_METHODS}")


@dataclass(frozen=True)
class DistillConfig(TeacherConfig):
    distill: DistillSettings = field(default_factory=DistillSettings)


def resolve_teacher_dir(path: str) -> str:
    """A teacher run directory (its exported ``model/``) or a checkpoint directory."""
    exported = os.path.join(path, "model")
    if os.path.isfile(os.path.join(exported, "config.json")):
        return exported
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if not os.path.exists(path):
        raise InputError(f"teacher not found: {path}")
    raise InputError(f"teacher {path} holds no config.json (nor model/config.json of a finished run)")


def computing_as(model: SonichuModel, student: ModelConfig) -> SonichuModel:
    """``model``'s weights computing with ``student``'s compute options (`COMPUTE_FIELDS`)."""
    cfg = model.cfg.replace(**{name: getattr(student, name) for name in COMPUTE_FIELDS})
    graphdef, _ = nnx.split(abstract_model(cfg))
    model = nnx.merge(graphdef, nnx.state(model))
    model.eval()
    return model


def load_teachers(paths: list[str], student: ModelConfig) -> list[SonichuModel]:
    """The teachers, computing as the student does; they share one architecture and the
    student's task table (a batch's task index selects the same head in every model)."""
    if not paths:
        raise InputError("distillation needs at least one teacher directory")
    models = [computing_as(SonichuModel.from_pretrained(resolve_teacher_dir(p)), student) for p in paths]
    first = models[0].cfg
    for path, model in zip(paths, models):
        if model.cfg.task_names != student.task_names:
            raise ConfigError(f"teacher {path} has tasks {model.cfg.task_names}, the student {student.task_names}")
        if model.cfg != first:
            diff = [f.name for f in dataclasses.fields(ModelConfig) if getattr(model.cfg, f.name) != getattr(first, f.name)]
            raise ConfigError(f"teacher {path} differs from teacher {paths[0]} in: {', '.join(diff)}")
    return models


def stack_teachers(models: list[SonichuModel]):
    """(graphdef, params, rest) with every leaf stacked on a leading teacher axis, on the host."""
    for model in models:
        model.eval()
    parts = [split_model(model) for model in models]
    graphdef = parts[0][0]
    params = jax.tree.map(lambda *xs: np.stack(xs), *[p[1] for p in parts])
    rest = jax.tree.map(lambda *xs: np.stack(xs), *[p[2] for p in parts])
    return graphdef, params, rest


def teacher_shardings(mesh, tree):
    """Each teacher's arrays sharded like the student's, the teacher axis unsplit."""
    return mesh_lib.state_shardings(mesh, tree, leading=1)


class Distillation(L1):
    """The distillation objective (`sonichu_jax.train.objectives`): ``aux`` holds the
    stacked frozen teachers, ``targets`` their reduced prediction."""

    def __init__(self, teacher_graphdef, teacher_cfg: ModelConfig, settings: DistillSettings):
        self.settings = settings
        self.cfg = teacher_cfg
        predict = make_predict_step(teacher_graphdef, teacher_cfg, settings.teacher_tta)
        self._predict_all = jax.vmap(
            lambda params, rest, images, task: predict(params, rest, images, task).mean(0),
            in_axes=(0, 0, None, None),
        )

    def targets(self, batch, aux):
        task = batch["task_id"][0]
        coords = self._predict_all(aux["params"], aux["rest"], batch["image"], task)
        return combine(coords, self.settings.reduce, jnp)

    def loss(self, outputs, batch, target):
        s, pred = self.settings, outputs["coords"]
        real = batch["has_label"] if s.pseudo_as_real else batch["has_label"] * (1.0 - batch["is_pseudo"])
        loss_real = l1_loss(pred, batch["keypoints"], batch["valid"] * real[:, None])
        # The teacher term covers every sample, over the task's keypoints (not the padding).
        in_task = (jnp.arange(pred.shape[1]) < task_keypoints(self.cfg, batch)).astype(pred.dtype)
        loss_teacher = l1_loss(pred, target, jnp.broadcast_to(in_task, pred.shape[:2]))
        total = s.real_weight * loss_real + s.teacher_weight * loss_teacher
        return total, {"loss_real": loss_real, "loss_teacher": loss_teacher}


class DistillStage(SupervisedStage):
    """The supervised stage with the distillation objective; the teachers are a frozen
    step input, loaded before anything is built and placed on the run's mesh. Built
    without its data (a plan), it takes ``teachers`` abstract teachers of the student's
    architecture."""

    name = "distill"
    config_class = DistillConfig

    def __init__(self, config: DistillConfig, objective=None, teachers: int = CARD_TEACHERS):
        super().__init__(config, objective)
        self.num_teachers, self.teachers = teachers, None

    def examples(self) -> int:
        models = load_teachers(list(self.config.distill.teachers), self.config.model)
        graphdef, params, rest = stack_teachers(models)
        self.num_teachers, self.teachers = len(models), {"params": params, "rest": rest}
        self.objective = Distillation(graphdef, models[0].cfg, self.config.distill)
        return super().examples()

    def aux_inputs(self, mesh) -> tuple:
        if self.teachers is None:
            graphdef, aux = abstract_teachers(self.config.model, self.num_teachers, mesh)
            self.objective = Distillation(graphdef, self.config.model, self.config.distill)
            return (aux,)
        return (jax.device_put(self.teachers, teacher_shardings(mesh, self.teachers)),)

    def model_flops(self, program) -> float:
        cfg = self.config
        teachers = flops.teachers_per_image(cfg.model, self.num_teachers, cfg.distill.teacher_tta)
        return super().model_flops(program) + teachers * cfg.data.batch_size


def abstract_teachers(cfg: ModelConfig, teachers: int, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, abstract stacked weights with shardings) of ``teachers`` teachers of
    architecture ``cfg``, as a run loads and places them."""
    model = abstract_model(cfg)
    model.eval()
    graphdef, params, rest = split_model(model)
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((teachers, *x.shape), x.dtype),
                           {"params": params, "rest": rest})
    return graphdef, mesh_lib.abstract_with_shardings(stacked, teacher_shardings(mesh, stacked))


def distill(config: DistillConfig, teachers: list[str] | None, data_spec: str | os.PathLike | None,
            out_dir: str | os.PathLike, *, resume: bool = False, stop_after: int | None = None,
            sinks: tuple[MetricsSink, ...] = ()) -> RunResult:
    """Train the student of ``config`` against ``teachers`` (default: ``distill.teachers``)
    on ``data_spec`` (default: ``data.source``); see `run`."""
    if teachers is not None:
        config = replace_path(config, "distill.teachers", tuple(os.path.abspath(t) for t in teachers))
    stage = DistillStage(with_absolute_path(config, "data.source", data_spec))
    return run(stage, out_dir, resume=resume, stop_after=stop_after, sinks=sinks)
