"""The supervised stage: a ViTPose teacher (and, with another objective, the distilled
student, `sonichu_jax.train.distill`), run by `sonichu_jax.train.loop.run`.

Data: the labelled source split with the card's fair split (validation never sees
pseudo-labels), plus the configured pseudo-label sets in training; an epoch is the
training records (pseudo-label copies included) over the global batch. Exports: the
final weights as ``model/`` and the checkpoint with the lowest validation MRE as
``best/``, both loadable with `SonichuModel.from_pretrained`.
"""

from __future__ import annotations

import os

import jax

from sonichu_jax.evaluation import MREReport
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import TeacherConfig, with_absolute_path
from sonichu_jax.train.loop import Program, RunResult, Stage, run
from sonichu_jax.train.metrics_log import MetricsSink
from sonichu_jax.train.step import BATCH_KEYS
from sonichu_jax.train.supervised import build_trainer, model_initializer
from sonichu_jax.train.validation import validate


def load_data(config: TeacherConfig):
    """(train records incl. selected pseudo-labels, validation records)."""
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.splits import fair_split
    from sonichu_jax.train.pseudo_label import select_pseudo_records

    tasks = config.model.tasks
    log = print if jax.process_index() == 0 else None
    source = load_source(config.data.source, tasks=tasks, log=log)
    train_idx, val_idx = fair_split(source, config.data.val_fraction, config.data.split_seed)
    train = [source[i] for i in train_idx]
    for pset in config.data.pseudo_labels:
        path = os.path.join(config.data.pseudo_dir, pset.path)  # join keeps an absolute path
        train += select_pseudo_records(pset, load_source(path, tasks=tasks, log=log), tasks, config.seed)
    return train, [source[i] for i in val_idx]


def pipeline_config(config: TeacherConfig, batch_size: int, augment: bool):
    from sonichu_jax.data.augment import AugmentConfig
    from sonichu_jax.data.pipeline import PipelineConfig

    d = config.data
    return PipelineConfig(batch_size=batch_size, image_size=config.model.image_size, seed=config.seed,
                          weighting=d.weighting, cap=d.cap, augment=AugmentConfig() if augment else None,
                          num_workers=d.num_workers)


class SupervisedStage(Stage):
    name = "train-teacher"
    batch_keys = BATCH_KEYS

    def __init__(self, config: TeacherConfig, objective=None):
        super().__init__(config)
        self.objective = objective  # None: the teacher's loss
        self._eval = None

    def examples(self) -> int:
        self.train_records, self.val_records = load_data(self.config)
        return len(self.train_records)

    def step_inputs(self, mesh) -> tuple:
        """Further step inputs placed on ``mesh`` (a distillation's teachers)."""
        return ()

    def build(self, mesh) -> Program:
        self.mesh = mesh
        extra = self.step_inputs(mesh)
        self.trainer = build_trainer(self.config, mesh, objective=self.objective, extra=extra)
        return Program(self.trainer.state, self.trainer.step, extra)

    def initial_state(self):
        make_model, args = model_initializer(self.config)
        return self.trainer.init_state(make_model, *args)

    def batches(self):
        from sonichu_jax.data.pipeline import make_train_pipeline

        local = mesh_lib.local_batch_size(self.config.data.batch_size)
        pipe = pipeline_config(self.config, local, self.config.data.augment)
        return iter(make_train_pipeline(self.train_records, self.config.model.tasks, pipe))

    def validation_every(self) -> int | None:
        return self.config.log.eval_every_steps if self.val_records else None

    def validate_at_start(self) -> bool:
        return self.config.log.eval_at_start

    def validate(self, state) -> MREReport:
        if self._eval is None:
            from sonichu_jax.data.pipeline import make_eval_pipeline

            local = mesh_lib.local_batch_size(self.config.data.batch_size)
            pipe = make_eval_pipeline(self.val_records, self.config.model.tasks,
                                      pipeline_config(self.config, local, False))
            self._eval = (self.trainer.eval_step(), pipe)
        eval_step, pipe = self._eval
        return validate(eval_step, state, iter(pipe), self.mesh, self.config.model)

    def export(self, state, out_dir: str, best: bool = False) -> None:
        self.trainer.export(state, out_dir, "best" if best else "model")


def train_teacher(config: TeacherConfig, data_spec: str | os.PathLike | None, out_dir: str | os.PathLike, *,
                  resume: bool = False, stop_after: int | None = None, sinks: tuple[MetricsSink, ...] = ()
                  ) -> RunResult:
    """Train (or continue) a teacher on ``data_spec`` (default: ``config.data.source``);
    ``stop_after`` ends the call after that many steps as if preempted (checkpoint saved)."""
    stage = SupervisedStage(with_absolute_path(config, "data.source", data_spec))
    return run(stage, out_dir, resume=resume, stop_after=stop_after, sinks=sinks)
