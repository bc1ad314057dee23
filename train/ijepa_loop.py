"""The I-JEPA pretraining loop: frames -> pretrained encoder, exported as a backbone.

Linear on purpose: set up (mesh, data, state, checkpoints) -> resume -> loop (step, log,
save) -> export. Out directory layout:

    train_config.json   the resolved config of this run (config file + --set overrides)
    metrics.jsonl       one line per log window: loss, lr, wd, momentum, target_std, img/s
    checkpoints/<step>  orbax: train state (encoder, predictor, EMA target, AdamW) + grain
                        iterator state (which also fixes the masks: they are keyed by step)
    backbone/           the target encoder as a SonichuModel checkpoint (config.json +
                        flax_model.safetensors; heads freshly initialised): what a teacher
                        starts from with ``init.kind=backbone init.path=<out>/backbone``
    backbone_pytorch/   the same weights in the ``sonichu`` PyTorch safetensors layout

The exported encoder is the EMA target encoder, as the official evaluation uses (#36).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import jax
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.errors import InputError
from sonichu_jax.train import ijepa
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.checkpointing import Checkpointer
from sonichu_jax.train.configlib import to_dict
from sonichu_jax.train.ijepa_config import IJEPAConfig
from sonichu_jax.train.metrics_log import JsonlLog, MetricsBuffer, summarize
from sonichu_jax.train.state import abstract_with_shardings
from sonichu_jax.train.teacher import StopRequest

CONFIG_FILE = "train_config.json"
BACKBONE_DIR = "backbone"
PYTORCH_DIR = "backbone_pytorch"


@dataclass
class PretrainResult:
    step: int
    interrupted: bool  # stopped early (signal or ``stop_after``) after saving
    last_metrics: dict | None  # the last logged window
    out_dir: str


def make_input(config: IJEPAConfig, frames_dir: str, local_batch: int):
    from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
    from sonichu_jax.data.ijepa_pipeline import RandomResizedCrop, make_pretrain_pipeline
    from sonichu_jax.data.sources import load_frames

    records = load_frames(frames_dir)
    d = config.data
    crop = RandomResizedCrop(config.model.image_size, d.crop_scale, d.crop_ratio, d.flip)
    sampler = MultiBlockMaskSampler(config.masks, config.model.grid, config.seed, jax.process_index())
    pipeline = make_pretrain_pipeline(records, crop, sampler, local_batch, config.seed, num_workers=d.num_workers,
                                      process_index=jax.process_index(), process_count=jax.process_count())
    return len(records), sampler, iter(pipeline)


def export_backbone(graphdef, config: IJEPAConfig, state: ijepa.IJEPAState, mesh, out_dir: str) -> None:
    """Write the EMA target encoder as ``backbone/`` (Flax) and ``backbone_pytorch/``
    (``sonichu`` layout), process 0 only."""
    from sonichu_jax import checkpoint

    gather = jax.jit(lambda t: t, out_shardings=mesh_lib.replicated(mesh))
    target = jax.device_get(gather(state.target))
    if jax.process_index() != 0:
        return
    cfg: ModelConfig = config.model
    model = checkpoint.init_model(cfg, seed=config.seed)
    nnx.update(model.backbone, target)
    model.eval()
    model.save_pretrained(os.path.join(out_dir, BACKBONE_DIR))
    checkpoint.export_pytorch(model, os.path.join(out_dir, PYTORCH_DIR), layout="sonichu")


def pretrain(config: IJEPAConfig, frames_dir: str, out_dir: str | os.PathLike, *, resume: bool = False,
             stop_after: int | None = None) -> PretrainResult:
    """Pretrain (or continue); ``stop_after`` ends the call after that many steps as if
    preempted (checkpoint saved), for tests and time-boxed jobs."""
    config.validate()
    out_dir = os.path.abspath(os.fspath(out_dir))
    mesh_lib.maybe_initialize_distributed()
    primary = jax.process_index() == 0
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)

    # ---- data: crops + masks, built on the host
    local_batch = mesh_lib.local_batch_size(config.data.batch_size)
    num_frames, sampler, data_iter = make_input(config, frames_dir, local_batch)

    # ---- state, already sharded
    graphdef, state = ijepa.create_state(config, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)

    # ---- checkpoints and resume
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), config.checkpoint)
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise InputError(
            f"{out_dir} already holds checkpoints (latest step {latest}); pass --resume or use a new --out"
        )
    if latest is not None:
        state = ckpt.restore(latest, abstract_with_shardings(state, shardings), data_iter)
    elif primary:
        from sonichu_jax.fileio import write_json

        write_json(os.path.join(out_dir, CONFIG_FILE), to_dict(config))
    if primary:
        print(f"pretrain: {num_frames} frames, masks: context {sampler.context_len} tokens (padded), "
              f"{config.masks.num_targets} targets x {sampler.target_len} tokens, mode {config.masks.mode}")

    train_step = ijepa.compile_step(ijepa.make_train_step(graphdef, config), state, mesh)
    log = JsonlLog(os.path.join(out_dir, "metrics.jsonl"), enabled=primary)
    buffer = MetricsBuffer()
    step = int(jax.device_get(state.step))
    last: dict | None = None
    bar = None
    if primary and config.log.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="pretrain", unit="step")
    window_start = time.perf_counter()

    def flush() -> None:
        """Fetch the buffered metrics (one host sync per window); stop on NaN/inf."""
        nonlocal last, window_start
        if not len(buffer):
            return
        rows = buffer.flush_finite(ckpt, out_dir)
        window = summarize(rows)
        window.update({k: rows[-1][1][k] for k in ("wd", "momentum")})  # schedules: the window's end
        elapsed = time.perf_counter() - window_start
        window["img_per_s"] = len(rows) * config.data.batch_size / max(elapsed, 1e-9)
        window_start = time.perf_counter()
        log.write(step=rows[-1][0], kind="train", **window)
        last = window
        if bar is not None:
            bar.set_postfix(loss=f"{window['loss']:.4f}", std=f"{window['target_std']:.3f}",
                            img_s=f"{window['img_per_s']:.1f}")

    interrupted = False
    limit = config.steps if stop_after is None else min(config.steps, step + stop_after)
    with StopRequest() as stop:
        while step < limit:
            local = next(data_iter)
            state, metrics = train_step(state, mesh_lib.global_batch(mesh, {k: local[k] for k in ijepa.BATCH_KEYS}))
            step += 1
            buffer.add(step, metrics)
            if bar is not None:
                bar.update(1)
            save_now = step % config.checkpoint.every_steps == 0
            if step % config.log.every_steps == 0 or save_now or step == limit:
                flush()
            if save_now:
                ckpt.save(step, state, data_iter)
            if stop.requested(step, config.log.every_steps):
                interrupted = True
                break
    flush()
    ckpt.save(step, state, data_iter)
    ckpt.wait()
    if bar is not None:
        bar.close()
    finished = step == config.steps
    if finished:
        export_backbone(graphdef, config, state, mesh, out_dir)
    ckpt.close()
    log.close()
    interrupted = interrupted or not finished
    if interrupted and primary:
        print(f"stopped at step {step}; checkpoint saved. Continue with --resume.")
    return PretrainResult(step=step, interrupted=interrupted, last_metrics=last, out_dir=out_dir)
