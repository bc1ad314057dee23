"""A teacher small enough to train on a laptop CPU in minutes on the synthetic data
(`sonichu-jax make-synthetic`): 64x64 inputs, a 2-block ViT, two tasks.

    sonichu-jax make-synthetic data/syn --n 200 --tasks HC fetal_femur
    sonichu-jax train-teacher --config configs/teacher_tiny.py --data data/syn --out runs/tiny
"""

from sonichu_jax.train.presets import tiny_teacher


def get_config():
    return tiny_teacher()
