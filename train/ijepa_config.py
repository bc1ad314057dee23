"""Typed config of an I-JEPA pretraining run (``configs/ijepa_*.py``): defaults are the
official ViT-B setting of facebookresearch/ijepa at the card's 256 px (docs/ijepa.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sonichu_jax.config import ModelConfig

from sonichu_jax.errors import ConfigError
from sonichu_jax.data.ijepa_masks import MaskConfig
from sonichu_jax.train.configlib import (
    CheckpointConfig,
    DistributedConfig,
    MeshConfig,
    check_warmup,
    require,
    validate_run,
)

LOSSES = ("smooth_l1", "l2")
NETWORKS = ("encoder", "predictor", "target_encoder")  # the parts of an I-JEPA checkpoint


@dataclass(frozen=True)
class PredictorConfig:
    width: int = 384
    depth: int = 6  # ViT-B (12 for ViT-L/H); heads = the encoder's


@dataclass(frozen=True)
class PretrainDataConfig:
    source: str = ""  # the folder of frames; the run stores it absolute
    batch_size: int = 2048  # global batch, over all processes and devices
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random resized crop, fraction of the frame area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height
    flip: bool = False  # the official recipe does not flip
    num_workers: int = 0  # grain worker processes per host (0 = in-process)
    # undecodable frames are replaced by other draws and counted; more than this fraction
    # of the frames stops the run (0: the first one does)
    max_bad_fraction: float = 0.01

    def __post_init__(self):
        require(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", self.max_bad_fraction, "in [0, 1]")
        lo, hi = self.crop_scale
        require(0 < lo <= hi <= 1, "data.crop_scale", self.crop_scale, "(low, high) with 0 < low <= high <= 1")
        require(0 < self.crop_ratio[0] <= self.crop_ratio[1], "data.crop_ratio", self.crop_ratio,
                "(low, high) with 0 < low <= high")


@dataclass(frozen=True)
class PretrainInitConfig:
    """Step 0's weights: the official initialisation (``path`` empty) or an I-JEPA
    checkpoint's networks, with a fresh optimiser state (docs/ijepa.md)."""

    path: str = ""
    parts: tuple[str, ...] = NETWORKS  # taken from it; an encoder left out copies the other
    missing_predictor: str = "fresh"  # a checkpoint without one: fresh (with a note) or error

    def __post_init__(self):
        unknown = [p for p in self.parts if p not in NETWORKS]
        if unknown or not {"encoder", "target_encoder"} & set(self.parts):
            raise ConfigError(f"init.parts must name encoder and/or target_encoder, optionally predictor "
                              f"(of {', '.join(NETWORKS)}), got {self.parts!r}")
        require(self.missing_predictor in ("fresh", "error"), "init.missing_predictor", self.missing_predictor,
                "fresh or error")


@dataclass(frozen=True)
class IJEPAOptimConfig:
    """AdamW; every schedule spans ``steps * schedule_scale`` iterations (official ``ipe_scale``)."""

    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    warmup_steps: int = 2000
    warmup_epochs: float | None = None  # when set, wins over warmup_steps
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: tuple[float, float] = (0.996, 1.0)
    schedule_scale: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    loss: str = "smooth_l1"  # the official code's loss (beta 1); "l2" as in the paper

    def __post_init__(self):
        require(self.loss in LOSSES, "optim.loss", self.loss, f"one of {LOSSES}")
        require(self.schedule_scale >= 1.0, "optim.schedule_scale", self.schedule_scale, ">= 1")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")


@dataclass(frozen=True)
class PretrainLogConfig:
    every_steps: int = 50  # metrics leave the device once per this many steps
    progress: bool = True
    tensorboard: bool = True  # event files in <run>/tensorboard/ beside metrics.jsonl
    profile_steps: str = ""  # "START:STOP": a jax.profiler trace of those steps in <run>/profile/


@dataclass(frozen=True)
class IJEPAConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(dtype="bfloat16"))
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    init: PretrainInitConfig = field(default_factory=PretrainInitConfig)
    masks: MaskConfig = field(default_factory=lambda: MaskConfig(context_len=128))
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    optim: IJEPAOptimConfig = field(default_factory=IJEPAOptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(keep_best=False))
    log: PretrainLogConfig = field(default_factory=PretrainLogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    steps: int = 23500  # ~300 epochs of 160,486 frames at batch 2048
    epochs: float | None = None  # when set, wins over steps
    seed: int = 0

    def validate(self) -> "IJEPAConfig":
        """Checks across sections, once the overrides are applied."""
        validate_run(self)
        require(self.data.num_workers >= 0, "data.num_workers", self.data.num_workers, ">= 0")
        require(self.optim.lr >= 0, "optim.lr", self.optim.lr, ">= 0")
        check_warmup(self, self.optim.schedule_scale)
        if self.model.width % self.model.num_heads or self.predictor.width % self.model.num_heads:
            raise ConfigError("encoder and predictor widths must be divisible by model.num_heads")
        return self
