"""I-JEPA pretraining of the card's backbone: ViT-B/16 at 256 px, predictor depth 6 width
384, the official masks, schedules (300 epochs, 40 of warm-up) and batch 2048; bfloat16
compute. 128 static context slots, targets padded to 54 tokens (docs/ijepa.md).
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
