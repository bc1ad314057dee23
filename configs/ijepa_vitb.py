"""I-JEPA pretraining of the card's backbone: ViT-B/16 at 256 px (16x16 patch grid),
predictor depth 6 width 384, the official masks, schedules and batch (docs/ijepa.md).

The official schedule is in epochs: 300, with 40 of warm-up, at batch 2048. The run turns
them into steps from its number of frames: the card's 160,486 give 78 steps per epoch,
23,400 steps and a 3,120-step warm-up. bfloat16 compute, float32 parameters and
optimiser state.

Masks: the official context block at 16x16 is always 15x15 at the top-left (the shrink
below the grid); contexts are cut to the batch minimum, which at 128+ images per host
stays below ~100 tokens: 128 static slots. Targets pad to 54 tokens (largest 9x6 block).
"""

from sonichu_jax.config import card_config
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
        model=card_config(dtype="bfloat16"),
        predictor=PredictorConfig(width=384, depth=6),
        masks=MaskConfig(context_len=128),
        data=PretrainDataConfig(batch_size=2048, crop_scale=(0.3, 1.0), num_workers=8),
        optim=IJEPAOptimConfig(start_lr=2e-4, lr=1e-3, final_lr=1e-6, warmup_epochs=40,
                               weight_decay=0.04, final_weight_decay=0.4, ema=(0.996, 1.0)),
        checkpoint=CheckpointConfig(every_steps=1000, keep=3, keep_best=False),
        log=PretrainLogConfig(every_steps=50),
        epochs=300,
    )
