"""The card's student: ViT-B/16 at 256x256 distilled from five teachers with
loss = loss_real + 0.5 * loss_teacher (coordinate-wise median target), trained as the r3
teacher is (its data, 100 epochs, 3 of warm-up).

    sonichu-jax distill --config configs/distill_vitb.py --data DATA --out runs/student \
        --teachers runs/r1 runs/r2 runs/r3 runs/selective runs/r3capped \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

import dataclasses

from sonichu_jax.configs import teacher_r3
from sonichu_jax.train.distill import DistillConfig, DistillSettings


def get_config() -> DistillConfig:
    base = teacher_r3.get_config()
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return DistillConfig(**fields, distill=DistillSettings(teacher_weight=0.5, real_weight=1.0, reduce="median"))
