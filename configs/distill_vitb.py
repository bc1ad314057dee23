"""The card's student: ViT-B/16 at 256x256 distilled from five teachers (R1, R2, R3,
Selective, r3capped) with loss = loss_real + 0.5 * loss_teacher, coordinate-wise median
target, 100 epochs, AdamW, cosine schedule with a 3-epoch warm-up.

    sonichu-jax distill --config configs/distill_vitb.py --data DATA --out runs/student \
        --teachers runs/r1 runs/r2 runs/r3 runs/selective runs/r3capped \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

import dataclasses
import os

from sonichu_jax.train.configlib import load_config_file
from sonichu_jax.train.distill import DistillConfig, DistillSettings


def get_config() -> DistillConfig:
    # The card's student saw 32,722 labelled + pseudo-labelled samples: the r3 teacher's data
    # and schedule (100 epochs, 3 of warm-up, in steps from the run's own training set).
    base = load_config_file(os.path.join(os.path.dirname(__file__), "teacher_r3.py"))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return DistillConfig(**fields, distill=DistillSettings(teacher_weight=0.5, real_weight=1.0, reduce="median"))
