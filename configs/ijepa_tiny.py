"""I-JEPA pretraining small enough for a laptop CPU in a few minutes on the synthetic
frames: 64x64 inputs (8x8 patch grid), the tiny 2-block encoder of `teacher_tiny.py` (so
its exported backbone is what that teacher starts from), a 2-block predictor.

    sonichu-jax make-synthetic data/syn --n 200 --tasks HC fetal_femur
    sonichu-jax pretrain --config configs/ijepa_tiny.py --frames data/syn/images --out runs/ijepa_tiny
    sonichu-jax train-teacher --config configs/teacher_tiny.py --data data/syn --out runs/tiny \
        --set init.kind=backbone --set init.path=runs/ijepa_tiny/backbone
"""

from sonichu_jax.train.presets import tiny_ijepa


def get_config():
    return tiny_ijepa()
