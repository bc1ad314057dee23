"""The supervised ViTPose teacher loop: L1 on soft-argmax coordinates, one head per task.

Linear on purpose: set up (mesh, data, state, checkpoints) -> resume -> loop (step, log,
evaluate, save) -> export. Out directory layout:

    train_config.json   the resolved config of this run (config file + --set overrides)
    metrics.jsonl       one line per log window and per validation
    checkpoints/<step>  orbax: train state + grain iterator state
    model/              final weights as a model checkpoint (config.json + safetensors)
    best/               the weights with the lowest validation MRE, same format
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

import jax
from flax import nnx

from sonichu_jax.config import ModelConfig

from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.checkpointing import Checkpointer
from sonichu_jax.train.configlib import TeacherConfig, to_dict
from sonichu_jax.train.evaluation import evaluate, make_eval_step
from sonichu_jax.train.metrics_log import JsonlLog, MetricsBuffer, summarize
from sonichu_jax.train.optim import GroupedAdamW
from sonichu_jax.train.state import abstract_with_shardings, create_state, merge_model, trainable_groups
from sonichu_jax.train.step import BATCH_KEYS, compile_train_step, make_train_step

CONFIG_FILE = "train_config.json"


@dataclass
class TeacherResult:
    step: int
    interrupted: bool  # stopped by SIGTERM/SIGINT after saving
    val_mre: float | None  # weighted validation MRE at the last evaluation
    best_step: int | None
    out_dir: str


class StopRequest:
    """SIGTERM/SIGINT set a flag that the loop polls between steps; the loop then saves a
    checkpoint and returns. Previous handlers come back on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step: int, every: int) -> bool:
        """Whether to stop now. In a multi-process run all processes must stop at the same
        step, so they agree (a collective, hence only every ``every`` steps)."""
        if jax.process_count() == 1:
            return self.signal is not None
        if step % every:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(self.signal is not None).any())


# -- data --------------------------------------------------------------------------------
def load_data(config: TeacherConfig, data_spec: str):
    """(train records incl. selected pseudo-labels, validation records)."""
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.splits import fair_split
    from sonichu_jax.train.pseudo_label import select_pseudo_records

    tasks = config.model.tasks
    log = print if jax.process_index() == 0 else None
    source = load_source(data_spec, tasks=tasks, log=log)
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
    return PipelineConfig(
        batch_size=batch_size,
        image_size=config.model.image_size,
        seed=config.seed,
        weighting=d.weighting,
        cap=d.cap,
        augment=AugmentConfig() if augment else None,
        num_workers=d.num_workers,
    )


# -- model initialisation ------------------------------------------------------------------
def _architecture_mismatch(a: ModelConfig, b: ModelConfig, fields: tuple[str, ...]) -> list[str]:
    return [f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}" for f in fields if getattr(a, f) != getattr(b, f)]


_BACKBONE_FIELDS = ("image_size", "patch_size", "in_channels", "width", "depth", "num_heads", "mlp_ratio",
                    "qkv_bias", "pos_embed", "patch_padding")


def model_initializer(config: TeacherConfig) -> tuple[Callable, tuple]:
    """(make_model, args) for `create_state`: scratch, a whole checkpoint, or a backbone."""
    cfg, init = config.model, config.init
    if init.kind == "scratch":
        return (lambda: SonichuModel(cfg, rngs=nnx.Rngs(config.seed))), ()
    if not init.path:
        raise ConfigError(f"init.kind={init.kind!r} needs init.path (a checkpoint directory)")
    other = SonichuModel.from_pretrained(init.path, dtype=cfg.dtype)
    if init.kind == "pretrained":
        fields = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "dtype")
        diff = _architecture_mismatch(cfg, other.cfg, fields)
        if diff:
            raise ConfigError(f"init.path {init.path} does not match the configured model: " + "; ".join(diff))
        graphdef, weights = nnx.split(other)
        return (lambda w: nnx.merge(graphdef, w)), (weights,)
    diff = _architecture_mismatch(cfg, other.cfg, _BACKBONE_FIELDS)
    if diff:
        raise ConfigError(f"backbone {init.path} does not match the configured encoder: " + "; ".join(diff))

    def with_backbone(backbone_state):
        model = SonichuModel(cfg, rngs=nnx.Rngs(config.seed))
        nnx.update(model.backbone, backbone_state)
        return model

    return with_backbone, (nnx.state(other.backbone),)


def export_model(graphdef, cfg: ModelConfig, state, mesh, directory: str) -> None:
    """Write the weights of ``state`` as a model checkpoint (process 0)."""
    gather = jax.jit(lambda p, r: (p, r), out_shardings=mesh_lib.replicated(mesh))
    params, rest = jax.device_get(gather(state.params, state.rest))
    if jax.process_index() == 0:
        model = merge_model(graphdef, cfg, params, rest)
        model.eval()
        model.save_pretrained(directory)


# -- the loop ----------------------------------------------------------------------------
def train_teacher(
    config: TeacherConfig,
    data_spec: str,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> TeacherResult:
    """Train (or continue) a teacher; ``stop_after`` ends the call after that many steps
    as if preempted (checkpoint saved), for tests and time-boxed jobs."""
    return run_training(config, data_spec, out_dir, resume=resume, stop_after=stop_after)


def run_training(
    config: TeacherConfig,
    data_spec: str,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    objective=None,
    aux_factory: Callable | None = None,
    name: str = "train-teacher",
) -> TeacherResult:
    """The supervised loop, shared by teachers and the distilled student.

    ``objective`` (see `sonichu_jax.train.step.Supervised`) replaces the loss;
    ``aux_factory(mesh)`` returns the extra, frozen step input it reads (placed on the
    mesh), e.g. the teachers of a distillation run.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    mesh_lib.maybe_initialize_distributed()
    primary = jax.process_index() == 0
    cfg = config.model
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)

    # ---- checkpoints: refuse to mix runs before any expensive work
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), config.checkpoint)
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise InputError(f"{out_dir} already holds checkpoints (latest step {latest}); pass --resume or use a new --out")

    # ---- data
    from sonichu_jax.data.pipeline import make_eval_pipeline, make_train_pipeline

    train_records, val_records = load_data(config, data_spec)
    local_batch = mesh_lib.local_batch_size(config.data.batch_size)
    train_iter = iter(make_train_pipeline(train_records, cfg.tasks, pipeline_config(config, local_batch, config.data.augment)))
    val_pipe = make_eval_pipeline(val_records, cfg.tasks, pipeline_config(config, local_batch, False)) if val_records else None

    # ---- state, already sharded
    make_model, model_args = model_initializer(config)
    groups = trainable_groups(cfg, config.optim.freeze_backbone)
    optimizer_for = lambda params: GroupedAdamW(config.optim, cfg, config.steps, groups, params)  # noqa: E731
    graphdef, state, optimizer = create_state(make_model, optimizer_for, mesh, *model_args)
    shardings = jax.tree.map(lambda x: x.sharding, state)

    # ---- resume
    if latest is not None:
        state = ckpt.restore(latest, abstract_with_shardings(state, shardings), train_iter)
    elif primary:
        from sonichu_jax.fileio import write_json

        write_json(os.path.join(out_dir, CONFIG_FILE), to_dict(config))

    aux = aux_factory(mesh) if aux_factory is not None else None
    train_step = compile_train_step(
        make_train_step(graphdef, cfg, optimizer, config.optim.freeze_backbone, objective),
        shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh),
        None if aux is None else jax.tree.map(lambda x: x.sharding, aux),
    )
    step_inputs = () if aux is None else (aux,)
    eval_step = make_eval_step(graphdef, cfg, mesh, config.log.eval_tta, shardings)
    log = JsonlLog(os.path.join(out_dir, "metrics.jsonl"), enabled=primary)
    buffer = MetricsBuffer()
    step = int(jax.device_get(state.step))
    last_mre = None

    def validate() -> float | None:
        if val_pipe is None:
            return None
        table = evaluate(eval_step, state, iter(val_pipe), mesh, cfg.task_names)
        log.write(step=step, kind="val", val_mre=table.weighted, val_mre_unweighted=table.unweighted,
                  per_task=table.per_task())
        if primary:
            print(f"\nvalidation at step {step}:\n{table.render()}")
        return table.weighted

    def flush() -> None:
        """Fetch the buffered metrics (one host sync per window), stop on NaN/inf."""
        if not len(buffer):
            return
        rows = buffer.flush_finite(ckpt, out_dir)
        window = summarize(rows)
        elapsed = time.perf_counter() - window_start[0]
        window["img_per_s"] = len(rows) * config.data.batch_size / max(elapsed, 1e-9)
        window_start[0] = time.perf_counter()
        log.write(step=rows[-1][0], kind="train", **window)
        if bar is not None:
            bar.set_postfix(loss=f"{window['loss']:.4f}", lr=f"{window['lr']:.2e}", img_s=f"{window['img_per_s']:.1f}")

    if latest is None and config.log.eval_at_start:
        last_mre = validate()
    bar = None
    if primary and config.log.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, desc=name, unit="step")
    window_start = [time.perf_counter()]
    interrupted = False
    limit = config.steps if stop_after is None else min(config.steps, step + stop_after)
    with StopRequest() as stop:
        while step < limit:
            local = next(train_iter)
            batch = mesh_lib.global_batch(mesh, {k: local[k] for k in BATCH_KEYS})
            state, metrics = train_step(state, batch, *step_inputs)
            step += 1
            buffer.add(step, metrics)
            if bar is not None:
                bar.update(1)
            evaluate_now = config.log.eval_every_steps > 0 and step % config.log.eval_every_steps == 0
            save_now = step % config.checkpoint.every_steps == 0 or evaluate_now
            if step % config.log.every_steps == 0 or save_now or step == limit:
                flush()
            if evaluate_now:
                last_mre = validate()
            if save_now:
                ckpt.save(step, state, train_iter, val_mre=last_mre if evaluate_now else None)
            if stop.requested(step, config.log.every_steps):
                interrupted = True
                break
    flush()
    if step == config.steps and val_pipe is not None and not (
        config.log.eval_every_steps > 0 and step % config.log.eval_every_steps == 0
    ):
        last_mre = validate()
        ckpt.save(step, state, train_iter, val_mre=last_mre)
    ckpt.save(step, state, train_iter)
    ckpt.wait()
    if bar is not None:
        bar.close()
    finished = step == config.steps
    best = ckpt.best_step()
    if finished:
        export_model(graphdef, cfg, state, mesh, os.path.join(out_dir, "model"))
        if best is not None:
            best_state = ckpt.restore(best, abstract_with_shardings(state, shardings))
            export_model(graphdef, cfg, best_state, mesh, os.path.join(out_dir, "best"))
    ckpt.close()
    log.close()
    interrupted = interrupted or not finished
    if interrupted and primary:
        print(f"stopped at step {step}; checkpoint saved. Continue with --resume.")
    return TeacherResult(step=step, interrupted=interrupted, val_mre=last_mre, best_step=best, out_dir=out_dir)
