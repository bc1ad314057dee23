"""The I-JEPA pretraining stage: unlabelled frames -> ``backbone/`` (the EMA target
encoder as a SonichuModel checkpoint that says only its backbone is trained) and
``backbone_pytorch/`` (the ``sonichu`` PyTorch layout); docs/ijepa.md.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from sonichu_jax.train import ijepa
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import with_absolute_path
from sonichu_jax.train.ijepa_config import IJEPAConfig
from sonichu_jax.train import flops
from sonichu_jax.train.loop import RunResult, Stage, run
from sonichu_jax.train.metrics_log import MetricsSink
from sonichu_jax.train.optim import path_keys
from sonichu_jax.train.run_dir import export_to

BACKBONE_DIR = "backbone"
PYTORCH_DIR = "backbone_pytorch"


class PretrainStage(Stage):
    name = "pretrain"
    config_class = IJEPAConfig
    card_examples = 160_486  # the card's unlabelled frames
    batch_keys = ijepa.BATCH_KEYS
    window_last = ("lr", "wd", "momentum", "frames_skipped")  # schedules and a running count, at the window's end
    postfix = ("loss", "target_std", "img_per_s")

    def examples(self) -> int:
        from sonichu_jax.data.sources import load_frames

        self.records = load_frames(self.config.data.source)
        return len(self.records)

    def build(self, mesh) -> ijepa.Pretrainer:
        self.mesh = mesh
        self.pretrainer = ijepa.build_pretrainer(self.config, mesh)
        return self.pretrainer

    def model_flops(self, program) -> float:
        c, sampler = self.config, program.sampler
        per_image = flops.ijepa_per_image(c.model, c.predictor.width, c.predictor.depth, sampler.context_len,
                                          c.masks.num_targets, sampler.target_len)
        return per_image * c.data.batch_size

    def initial_state(self):
        if not self.config.init.path:
            return self.pretrainer.init_state()
        from sonichu_jax.train.ijepa_start import load_start

        start = load_start(self.config)
        if jax.process_index() == 0:
            for line in start.lines:
                print(line)
        return self.pretrainer.init_state(start)

    def batches(self):
        from sonichu_jax.data.ijepa_pipeline import RandomResizedCrop, make_pretrain_pipeline

        d, sampler, masks = self.config.data, self.pretrainer.sampler, self.config.masks
        if jax.process_index() == 0:
            print(f"pretrain: {len(self.records)} frames, masks: context {sampler.context_len} tokens (padded), "
                  f"{masks.num_targets} targets x {sampler.target_len} tokens, mode {masks.mode}")
        crop = RandomResizedCrop(self.config.model.image_size, d.crop_scale, d.crop_ratio, d.flip)
        pipeline = make_pretrain_pipeline(
            self.records, crop, sampler, mesh_lib.local_batch_size(d.batch_size), self.config.seed,
            num_workers=d.num_workers, process_index=jax.process_index(), process_count=jax.process_count(),
            max_bad_fraction=d.max_bad_fraction,
        )
        return iter(pipeline)

    def export(self, state: ijepa.IJEPAState, out_dir: str, best: bool = False) -> None:
        """The EMA target encoder as ``backbone/`` and ``backbone_pytorch/`` (process 0)."""
        from sonichu_jax import checkpoint

        gather = jax.jit(lambda t, r: (t, r), out_shardings=mesh_lib.replicated(self.mesh))
        target, rest = jax.device_get(gather(state.target, state.rest["encoder"]))
        if jax.process_index() != 0:
            return
        model = backbone_model(self.config.model, {**host_arrays(target), **host_arrays(rest)}, self.config.seed)
        export_to(out_dir, BACKBONE_DIR, lambda directory: save_backbone(model, directory))
        export_to(out_dir, PYTORCH_DIR, lambda directory: checkpoint.export_pytorch(model, directory, layout="sonichu"))


def host_arrays(tree) -> dict[str, np.ndarray]:
    """A fetched state tree by state path (``blocks/0/attn/qkv/kernel``)."""
    return {"/".join(map(str, path_keys(p))): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def backbone_model(cfg, backbone: dict[str, np.ndarray], seed: int):
    """A SonichuModel with ``backbone`` (encoder variables by state path) and new heads
    sampled on the host (a jitted initialisation would compile for seconds, to be overwritten)."""
    from sonichu_jax import checkpoint
    from sonichu_jax.convert.shapes import is_head_path

    arrays = {f"backbone/{path}": value for path, value in backbone.items()}
    shapes = checkpoint.expected_shapes(checkpoint.abstract_model(cfg))
    heads = checkpoint.fresh_arrays({p: s for p, s in shapes.items() if is_head_path(p)}, seed=seed)
    return checkpoint.model_from_arrays(cfg, {**arrays, **heads})


def pretrain(config: IJEPAConfig, frames_dir: str | os.PathLike | None, out_dir: str | os.PathLike, *,
             resume: bool = False, stop_after: int | None = None, sinks: tuple[MetricsSink, ...] = ()) -> RunResult:
    """Pretrain (or continue) on the frames in ``frames_dir`` (default: ``data.source``); see `run`."""
    config = with_absolute_path(config, "data.source", frames_dir)
    if config.init.path:  # stored absolute in train_config.json, as the data path
        config = with_absolute_path(config, "init.path", None)
    stage = PretrainStage(config)
    return run(stage, out_dir, resume=resume, stop_after=stop_after, sinks=sinks)


def save_backbone(model, directory: str) -> None:
    """A SonichuModel checkpoint whose config.json says only its backbone is trained."""
    model.save_pretrained(directory)
    model.cfg.save(directory, pretrained_parts=["backbone"])
