"""The tiny configurations that run the whole recipe on a laptop CPU in minutes on the
synthetic data (`configs/*_tiny.py`, `sonichu-jax demo`): one 64 px, 2-block encoder for
every stage, so the I-JEPA export is what the teachers start from.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from sonichu_jax.config import ModelConfig, tiny_config
from sonichu_jax.data.ijepa_masks import MaskConfig
from sonichu_jax.data.synthetic import synthetic_tasks
from sonichu_jax.train.configlib import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TeacherConfig
from sonichu_jax.train.distill import DistillConfig, DistillSettings
from sonichu_jax.train.ijepa_config import (
    IJEPAConfig,
    IJEPAOptimConfig,
    PredictorConfig,
    PretrainDataConfig,
    PretrainLogConfig,
)

DEFAULT_TASKS = ("HC", "fetal_femur")


def tiny_model(tasks: Sequence[str] = DEFAULT_TASKS) -> ModelConfig:
    return tiny_config(tasks=synthetic_tasks(tuple(tasks)))


def tiny_teacher(tasks: Sequence[str] = DEFAULT_TASKS, steps: int = 400) -> TeacherConfig:
    return TeacherConfig(
        model=tiny_model(tasks),
        data=DataConfig(batch_size=16, augment=True),
        optim=OptimConfig(lr=2e-3, weight_decay=0.05, layer_decay=1.0, warmup_steps=min(30, steps // 10),
                          min_lr_ratio=0.05),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        log=LogConfig(every_steps=20, eval_every_steps=100),
        steps=steps,
    )


def tiny_distill(tasks: Sequence[str] = DEFAULT_TASKS, steps: int = 400) -> DistillConfig:
    base = tiny_teacher(tasks, steps)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return DistillConfig(**fields, distill=DistillSettings())


def tiny_ijepa(tasks: Sequence[str] = DEFAULT_TASKS, steps: int = 600) -> IJEPAConfig:
    # On an 8x8 grid the official min_keep=10 can never be met by 3x3 target blocks (the
    # official sampler would loop forever): min_keep is 4 here. Contexts are cut to the
    # batch minimum (official), which at batch 32 stays below 20 tokens: 32 padded slots.
    return IJEPAConfig(
        model=tiny_model(tasks),
        predictor=PredictorConfig(width=32, depth=2),
        masks=MaskConfig(min_keep=4, context_len=32),
        data=PretrainDataConfig(batch_size=32),
        optim=IJEPAOptimConfig(start_lr=2e-4, lr=1e-3, final_lr=1e-5, warmup_steps=min(40, steps // 10)),
        checkpoint=CheckpointConfig(every_steps=200, keep=2, keep_best=False),
        log=PretrainLogConfig(every_steps=20),
        steps=steps,
    )
