"""I-JEPA pretraining small enough for a laptop CPU in a few minutes on the synthetic
frames: 64x64 inputs (8x8 patch grid), the tiny 2-block encoder of `teacher_tiny.py` (so
its exported backbone is what that teacher starts from), a 2-block predictor.

    sonichu-jax make-synthetic data/syn --n 200
    sonichu-jax pretrain --config configs/ijepa_tiny.py --frames data/syn/images --out runs/ijepa_tiny
    sonichu-jax train-teacher --config configs/teacher_tiny.py --data data/syn --out runs/tiny \
        --set init.kind=backbone --set init.path=runs/ijepa_tiny/backbone

On an 8x8 grid the official min_keep=10 can never be met by 3x3 target blocks (the
official sampler would loop forever): min_keep is 4 here. Contexts are cut to the batch
minimum (official), which at batch 32 stays below 20 tokens: 32 padded slots suffice.
"""

from sonichu_jax.config import tiny_config
from sonichu_jax.data.synthetic import synthetic_tasks
from sonichu_jax.data.ijepa_masks import MaskConfig
from sonichu_jax.train.configlib import CheckpointConfig
from sonichu_jax.train.ijepa_config import (
    IJEPAConfig,
    IJEPAOptimConfig,
    PredictorConfig,
    PretrainDataConfig,
    PretrainLogConfig,
)


def get_config() -> IJEPAConfig:
    return IJEPAConfig(
        # teacher_tiny's encoder and tasks: backbone/ is then a complete teacher_tiny model
        model=tiny_config(tasks=synthetic_tasks(("HC", "fetal_femur"))),
        predictor=PredictorConfig(width=32, depth=2),
        masks=MaskConfig(min_keep=4, context_len=32),
        data=PretrainDataConfig(batch_size=32),
        optim=IJEPAOptimConfig(start_lr=2e-4, lr=1e-3, final_lr=1e-5, warmup_steps=40),
        checkpoint=CheckpointConfig(every_steps=200, keep=2, keep_best=False),
        log=PretrainLogConfig(every_steps=20),
        steps=600,
    )
