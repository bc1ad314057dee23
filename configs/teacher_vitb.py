"""ViTPose teacher on the card's model: ViT-B/16 at 256x256, one classic head per task,
fine-tuned from an I-JEPA backbone with the ViTPose-B optimiser; 100 epochs, 3 of warm-up,
batch 64 (docs/recipe.md, "Stage 2").

    sonichu-jax train-teacher --config configs/teacher_vitb.py --data DATA --out runs/t1 \
        --set init.path=runs/ijepa/backbone
"""

import dataclasses

from sonichu_jax.config import card_config
from sonichu_jax.train.configlib import (
    CheckpointConfig, DataConfig, InitConfig, LogConfig, OptimConfig, PseudoLabelSet, TeacherConfig,
)


def get_config() -> TeacherConfig:
    return TeacherConfig(
        model=card_config(dtype="bfloat16"),
        init=InitConfig(kind="backbone", path="runs/ijepa/backbone"),
        data=DataConfig(batch_size=64, weighting="proportional", num_workers=8),
        optim=OptimConfig(lr=5e-4, weight_decay=0.1, layer_decay=0.75, warmup_epochs=3, clip_norm=1.0),
        checkpoint=CheckpointConfig(every_steps=2000, keep=3),
        log=LogConfig(every_steps=50, eval_every_epochs=5),
        epochs=100,
    )


def with_pseudo_labels(pseudo: PseudoLabelSet, seed: int, **data) -> TeacherConfig:
    """This teacher trained with one pseudo-label set (the regimes, `teacher_r*.py`)."""
    base = get_config()
    return dataclasses.replace(base, data=dataclasses.replace(base.data, pseudo_labels=(pseudo,), **data), seed=seed)
