"""ViTPose teacher on the card's model: ViT-B/16 at 256x256, one classic head per task,
fine-tuned from an I-JEPA backbone with the ViTPose-B optimiser (docs/recipe.md, "Stage 2").

    sonichu-jax train-teacher --config configs/teacher_vitb.py --data DATA --out runs/t1 \
        --set init.path=runs/ijepa/backbone

The card's schedule is in epochs: 100, with 3 of warm-up, batch 64. The run turns them
into steps from its own training set (after the split and the pseudo-label selection):
the card's 32,722 samples give 511 steps per epoch, 51,100 steps. Validation every 5
epochs; checkpoints every 2,000 steps.
"""

from sonichu_jax.config import card_config
from sonichu_jax.train.configlib import (
    CheckpointConfig, DataConfig, InitConfig, LogConfig, OptimConfig, TeacherConfig,
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
