"""The supervised stage (teachers; the distilled student is the same stage with another
objective, `sonichu_jax.train.distill`) and its trainer: `build_trainer` builds the
program for any mesh without allocating (plans compile exactly it); `Trainer.init_state`
allocates a fresh state straight into its shardings (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.checkpoint import abstract_model
from sonichu_jax.config import COMPUTE_FIELDS, ModelConfig
from sonichu_jax.errors import ConfigError
from sonichu_jax.evaluation import MREReport
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import TeacherConfig, with_absolute_path
from sonichu_jax.train.loop import RunResult, Stage, run
from sonichu_jax.train.metrics_log import MetricsSink
from sonichu_jax.train.objectives import make_objective
from sonichu_jax.train import flops
from sonichu_jax.train.optim import GroupedAdamW
from sonichu_jax.train.run_dir import export_to
from sonichu_jax.train.state import (
    TrainState,
    fresh_state,
    merge_model,
    split_model,
    trainable_groups,
)
from sonichu_jax.train.step import BATCH_KEYS, make_train_step, max_keypoints
from sonichu_jax.train.validation import make_eval_step, validate


def abstract_batch(cfg: ModelConfig, global_batch: int, mesh: jax.sharding.Mesh) -> dict:
    """The shapes, dtypes and shardings of one global training batch (`BATCH_KEYS`)."""
    b, k, (h, w) = global_batch, max_keypoints(cfg), cfg.image_size
    shapes = {"image": ((b, h, w, 3), jnp.float32), "keypoints": ((b, k, 2), jnp.float32),
              "valid": ((b, k), jnp.float32), "task_id": ((b,), jnp.int32), "has_label": ((b,), jnp.float32),
              "is_pseudo": ((b,), jnp.float32)}
    sharding = mesh_lib.batch_sharding(mesh)
    return {key: jax.ShapeDtypeStruct(*shapes[key], sharding=sharding) for key in BATCH_KEYS}


@dataclass
class Trainer:
    """A supervised run's program on a mesh: abstract ``state`` and ``batch`` with shardings,
    ``aux`` as given (placed arrays for a run, ShapeDtypeStructs for a plan)."""

    config: TeacherConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    optimizer: GroupedAdamW
    state: TrainState
    batch: dict
    aux: tuple  # further step inputs (a distillation's frozen teachers)
    step: Callable  # jitted ``step(state, batch, *aux) -> (state, metrics)``, state donated

    def lower(self):
        """The step lowered from the abstract inputs (``.compile()`` it)."""
        return self.step.lower(self.state, self.batch, *self.aux)

    def shardings(self) -> TrainState:
        return jax.tree.map(lambda x: x.sharding, self.state)

    def init_state(self, make_model: Callable[..., SonichuModel], *model_args) -> TrainState:
        """A fresh state written into its shardings by one jitted initialiser; the traceable
        ``make_model(*model_args)`` gets loaded weights as arguments, not baked-in constants."""
        init = jax.jit(lambda *args: fresh_state(make_model(*args), self.optimizer), out_shardings=self.shardings())
        return init(*model_args)

    def eval_step(self):
        """The jitted validation step (flip TTA as ``log.eval_tta`` says)."""
        return make_eval_step(self.graphdef, self.config.model, self.mesh, self.config.log.eval_tta,
                              self.shardings())

    def export(self, state: TrainState, out_dir: str, name: str) -> None:
        """``state``'s weights as the checkpoint directory ``out_dir/name`` (process 0)."""
        gather = jax.jit(lambda p, r: (p, r), out_shardings=mesh_lib.replicated(self.mesh))
        params, rest = jax.device_get(gather(state.params, state.rest))
        if jax.process_index() == 0:
            model = merge_model(self.graphdef, self.config.model, params, rest)
            model.eval()
            export_to(out_dir, name, model.save_pretrained)


def build_trainer(config: TeacherConfig, mesh: jax.sharding.Mesh, *, objective=None, aux: tuple = (),
                  wrap: Callable | None = None) -> Trainer:
    """The program of ``config`` on ``mesh``, allocating nothing. ``objective`` replaces
    ``loss.kind``'s; ``aux`` are further step inputs it reads (with shardings); ``wrap``
    wraps the step before ``jit`` (tests count traces)."""
    cfg, optim = config.model, config.optim
    model = abstract_model(cfg)
    model.train()
    graphdef, params, _ = split_model(model)
    groups = trainable_groups(cfg, optim.freeze_backbone)
    optimizer = GroupedAdamW(optim, cfg, config.steps, groups, params)
    abstract = jax.eval_shape(lambda: fresh_state(SonichuModel(cfg, rngs=nnx.Rngs(config.seed)), optimizer))
    shardings = mesh_lib.state_shardings(mesh, abstract)
    objective = objective or make_objective(config.loss, cfg)
    fn = make_train_step(graphdef, cfg, optimizer, optim.freeze_backbone, objective)
    aux_shardings = tuple(jax.tree.map(lambda x: x.sharding, e) for e in aux)
    step = mesh_lib.jit_step(fn, mesh, shardings, aux_shardings, wrap, config.mesh.collective_matmul)
    return Trainer(config, mesh, graphdef, optimizer, mesh_lib.abstract_with_shardings(abstract, shardings),
                   abstract_batch(cfg, config.data.batch_size, mesh), aux, step)


# -- initial weights -------------------------------------------------------------------------
_BACKBONE_FIELDS = ("image_size", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_ratio",
                    "qkv_bias", "pos_embed", "patch_padding")


def _mismatch(a: ModelConfig, b: ModelConfig, fields: tuple[str, ...]) -> list[str]:
    return [f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}" for f in fields if getattr(a, f) != getattr(b, f)]


def check_whole_model(path: str) -> ModelConfig:
    """The checkpoint's config, refusing (from the headers, before loading) one that holds
    only a backbone, whose heads ``init.kind=pretrained`` would take as trained."""
    from sonichu_jax.convert import open_checkpoint
    from sonichu_jax.convert.loading import plan_model

    ckpt = open_checkpoint(path)
    parts = ckpt.config.get("pretrained_parts")
    planned = plan_model(ckpt, read_values=False)
    if planned.report.new_heads or (parts is not None and "heads" not in parts):
        trained = f"trained weights only for its {', '.join(parts)}" if parts is not None else "no heads"
        raise ConfigError(f"init.kind=pretrained needs a whole model, but init.path {path} holds {trained} "
                          f"(its {len(planned.cfg.tasks)} heads would start untrained); use init.kind=backbone to "
                          "start from its encoder with new heads")
    return planned.cfg


def check_tasks(cfg: ModelConfig, saved: ModelConfig, init) -> list[str]:
    """The configured tasks the checkpoint lacks (``init.new_heads=fresh``); a task both
    have must agree in keypoint count and flip permutation."""
    have = {t.name: t for t in saved.tasks}
    for spec in cfg.tasks:
        old = have.get(spec.name, spec)
        if old.num_keypoints != spec.num_keypoints:
            raise ConfigError(f"task {spec.name} has {old.num_keypoints} keypoints in init.path {init.path} but "
                              f"{spec.num_keypoints} configured: give the new task another name")
        if old.flip_perm != spec.flip_perm:
            raise ConfigError(f"task {spec.name}: flip_perm {old.flip_perm} in init.path {init.path}, "
                              f"{spec.flip_perm} configured; configure the checkpoint's flip_perm")
    new = [t.name for t in cfg.tasks if t.name not in have]
    if new and init.new_heads != "fresh":
        raise ConfigError(f"init.path {init.path} has no head for task {', '.join(new)}; "
                          "--set init.new_heads=fresh starts them from new heads")
    return new


def model_initializer(config: TeacherConfig) -> tuple[Callable, tuple]:
    """(make_model, args) for `Trainer.init_state`: scratch, a whole checkpoint, or a backbone."""
    cfg, init = config.model, config.init
    if init.kind == "scratch":
        return (lambda: SonichuModel(cfg, rngs=nnx.Rngs(config.seed))), ()
    if not init.path:
        raise ConfigError(f"init.kind={init.kind!r} needs init.path (a checkpoint directory)")
    if init.kind == "pretrained":
        saved = check_whole_model(init.path)
        new = check_tasks(cfg, saved, init)
        fields = tuple(f.name for f in dataclasses.fields(ModelConfig)
                       if f.name not in (*COMPUTE_FIELDS, "tasks", "decoder"))
        diff = _mismatch(cfg, saved, fields)
        if diff:
            raise ConfigError(f"init.path {init.path} does not match the configured model: " + "; ".join(diff))
        other = SonichuModel.from_pretrained(init.path, dtype=cfg.dtype, tasks=cfg.tasks)
        if new and jax.process_index() == 0:
            print(f"init: new heads for {', '.join(new)} (not in {init.path})")
        graphdef, weights = nnx.split(other)
        return (lambda w: nnx.merge(graphdef, w)), (weights,)
    other = SonichuModel.from_pretrained(init.path, dtype=cfg.dtype)
    diff = _mismatch(cfg, other.cfg, _BACKBONE_FIELDS)
    if diff:
        raise ConfigError(f"backbone {init.path} does not match the configured encoder: " + "; ".join(diff))

    def with_backbone(backbone_state: Any) -> SonichuModel:
        model = SonichuModel(cfg, rngs=nnx.Rngs(config.seed))
        nnx.update(model.backbone, backbone_state)
        return model

    return with_backbone, (nnx.state(other.backbone),)


# -- the stage --------------------------------------------------------------------------
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
    config_class = TeacherConfig
    card_examples = 32_722  # the card's labelled and pseudo-labelled samples
    batch_keys = BATCH_KEYS

    def __init__(self, config: TeacherConfig, objective=None):
        super().__init__(config)
        self.objective = objective  # None: the one loss.kind names
        self._eval = None

    def examples(self) -> int:
        self.train_records, self.val_records = load_data(self.config)
        return len(self.train_records)

    def aux_inputs(self, mesh) -> tuple:
        """Further step inputs placed on ``mesh`` (a distillation's teachers)."""
        return ()

    def build(self, mesh) -> Trainer:
        self.mesh, aux = mesh, self.aux_inputs(mesh)  # first: a distillation's sets the objective
        self.trainer = build_trainer(self.config, mesh, objective=self.objective, aux=aux)
        return self.trainer

    def model_flops(self, program) -> float:
        cfg = self.config
        return flops.supervised_per_image(cfg.model, cfg.optim.freeze_backbone) * cfg.data.batch_size

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
    """Train (or continue) a teacher on ``data_spec`` (default: ``data.source``); see `run`."""
    stage = SupervisedStage(with_absolute_path(config, "data.source", data_spec))
    return run(stage, out_dir, resume=resume, stop_after=stop_after, sinks=sinks)
