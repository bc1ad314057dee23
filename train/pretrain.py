"""The I-JEPA pretraining stage: unlabelled frames -> a pretrained encoder, run by
`sonichu_jax.train.loop.run`.

An epoch is the number of frames over the global batch. Exports:

    backbone/           the EMA target encoder as a SonichuModel checkpoint (config.json +
                        flax_model.safetensors; heads freshly initialised): what a teacher
                        starts from with ``init.kind=backbone init.path=<out>/backbone``
    backbone_pytorch/   the same weights in the ``sonichu`` PyTorch safetensors layout

The exported encoder is the EMA target encoder, as the official evaluation uses it
(docs/ijepa.md). Checkpoints hold the encoder, predictor, EMA target, AdamW state and the
grain iterator, which also fixes the masks (they are keyed by step).
"""

from __future__ import annotations

import os

import jax
from flax import nnx

from sonichu_jax.train import ijepa
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import with_absolute_path
from sonichu_jax.train.ijepa_config import IJEPAConfig
from sonichu_jax.train.loop import Program, RunResult, Stage, run
from sonichu_jax.train.metrics_log import MetricsSink
from sonichu_jax.train.run_dir import export_to

BACKBONE_DIR = "backbone"
PYTORCH_DIR = "backbone_pytorch"


class PretrainStage(Stage):
    name = "pretrain"
    batch_keys = ijepa.BATCH_KEYS
    window_last = ("lr", "wd", "momentum")  # the schedules, at the window's end
    postfix = ("loss", "target_std", "img_per_s")

    def examples(self) -> int:
        from sonichu_jax.data.sources import load_frames

        self.records = load_frames(self.config.data.source)
        return len(self.records)

    def build(self, mesh) -> Program:
        self.mesh = mesh
        self.pretrainer = ijepa.build_pretrainer(self.config, mesh)
        sampler, masks = self.pretrainer.sampler, self.config.masks
        if jax.process_index() == 0:
            print(f"pretrain: {len(self.records)} frames, masks: context {sampler.context_len} tokens (padded), "
                  f"{masks.num_targets} targets x {sampler.target_len} tokens, mode {masks.mode}")
        return Program(self.pretrainer.state, self.pretrainer.step)

    def initial_state(self):
        return self.pretrainer.init_state()

    def batches(self):
        from sonichu_jax.data.ijepa_pipeline import RandomResizedCrop, make_pretrain_pipeline

        d = self.config.data
        crop = RandomResizedCrop(self.config.model.image_size, d.crop_scale, d.crop_ratio, d.flip)
        pipeline = make_pretrain_pipeline(
            self.records, crop, self.pretrainer.sampler, mesh_lib.local_batch_size(d.batch_size), self.config.seed,
            num_workers=d.num_workers, process_index=jax.process_index(), process_count=jax.process_count(),
        )
        return iter(pipeline)

    def export(self, state: ijepa.IJEPAState, out_dir: str, best: bool = False) -> None:
        """The EMA target encoder as ``backbone/`` (Flax) and ``backbone_pytorch/``
        (``sonichu`` layout), process 0 only."""
        from sonichu_jax import checkpoint

        gather = jax.jit(lambda t: t, out_shardings=mesh_lib.replicated(self.mesh))
        target = jax.device_get(gather(state.target))
        if jax.process_index() != 0:
            return
        model = checkpoint.init_model(self.config.model, seed=self.config.seed)
        nnx.update(model.backbone, target)
        model.eval()
        export_to(out_dir, BACKBONE_DIR, model.save_pretrained)
        export_to(out_dir, PYTORCH_DIR, lambda directory: checkpoint.export_pytorch(model, directory, layout="sonichu"))


def pretrain(config: IJEPAConfig, frames_dir: str | os.PathLike | None, out_dir: str | os.PathLike, *,
             resume: bool = False, stop_after: int | None = None, sinks: tuple[MetricsSink, ...] = ()) -> RunResult:
    """Pretrain (or continue) on the frames in ``frames_dir`` (default: ``data.source``);
    ``stop_after`` ends the call after that many steps as if preempted (checkpoint saved)."""
    stage = PretrainStage(with_absolute_path(config, "data.source", frames_dir))
    return run(stage, out_dir, resume=resume, stop_after=stop_after, sinks=sinks)
