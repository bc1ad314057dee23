"""A student small enough to distil on a laptop CPU in minutes, from tiny teachers
(`configs/teacher_tiny.py`) on the synthetic data.

    sonichu-jax distill --config configs/distill_tiny.py --data data/syn --out runs/student \
        --teachers runs/t1 runs/t2 runs/t3
"""

from sonichu_jax.train.presets import tiny_distill


def get_config():
    return tiny_distill()
