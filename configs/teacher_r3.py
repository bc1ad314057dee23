"""Teacher regime R3: labelled data + round-3 pseudo-labels (by the R2 teacher) within 5 px
flip disagreement.

    sonichu-jax train-teacher --config configs/teacher_r3.py --data DATA --out runs/r3 \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

from sonichu_jax.configs.teacher_vitb import with_pseudo_labels
from sonichu_jax.train.configlib import PseudoLabelSet


def get_config():
    return with_pseudo_labels(PseudoLabelSet("round3.jsonl", max_disagreement_px=5.0), seed=3)
