"""ViTPose teacher on the card's model: ViT-B/16 at 256x256, one classic head per task,
fine-tuned from an I-JEPA backbone with the ViTPose-B optimiser (docs/recipe.md, "Stage 2").

    sonichu-jax train-teacher --config configs/teacher_vitb.py --data DATA --out runs/t1 \
        --set init.path=runs/ijepa/backbone
"""

from sonichu_jax.config import card_config
from sonichu_jax.train.configlib import (
    CheckpointConfig, DataConfig, InitConfig, LogConfig, OptimConfig, TeacherConfig,
)


def get_config() -> TeacherConfig:
    # 32,722 training samples / batch 64 ~ 511 steps per epoch; 100 epochs, 3 warm-up epochs.
    steps_per_epoch = 511
    return TeacherConfig(
        model=card_config(dtype="bfloat16"),
        init=InitConfig(kind="backbone", path="runs/ijepa/backbone"),
        data=DataConfig(batch_size=64, weighting="proportional", num_workers=8),
        optim=OptimConfig(lr=5e-4, weight_decay=0.1, layer_decay=0.75, warmup_steps=3 * steps_per_epoch,
                          clip_norm=1.0),
        checkpoint=CheckpointConfig(every_steps=2000, keep=3),
        log=LogConfig(every_steps=50, eval_every_steps=steps_per_epoch * 5),
        steps=100 * steps_per_epoch,
    )
