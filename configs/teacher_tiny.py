"""A teacher small enough to train on a laptop CPU in minutes on the synthetic data
(`sonichu-jax make-synthetic`): 64x64 inputs, a 2-block ViT, two tasks.

    sonichu-jax make-synthetic data/syn --n 200
    sonichu-jax train-teacher --config configs/teacher_tiny.py --data data/syn --out runs/tiny
"""

from sonichu_jax.config import tiny_config
from sonichu_jax.data.synthetic import synthetic_tasks
from sonichu_jax.train.configlib import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TeacherConfig


def get_config() -> TeacherConfig:
    return TeacherConfig(
        # The synthetic table carries the flip permutations that flip augmentation needs.
        model=tiny_config(tasks=synthetic_tasks(("HC", "fetal_femur")), softargmax_beta=1.0),
        data=DataConfig(batch_size=16, augment=True),
        optim=OptimConfig(lr=2e-3, weight_decay=0.05, layer_decay=1.0, warmup_steps=30, min_lr_ratio=0.05),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        log=LogConfig(every_steps=20, eval_every_steps=100),
        steps=400,
    )
