"""Teacher regime R2: labelled data + round-2 pseudo-labels (by the R1 teacher) within 6 px
flip disagreement.

    sonichu-jax train-teacher --config configs/teacher_r2.py --data DATA --out runs/r2 \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

from sonichu_jax.configs.teacher_vitb import with_pseudo_labels
from sonichu_jax.train.configlib import PseudoLabelSet


def get_config():
    return with_pseudo_labels(PseudoLabelSet("round2.jsonl", max_disagreement_px=6.0), seed=2)
