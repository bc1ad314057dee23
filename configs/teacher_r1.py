"""Teacher regime R1: labelled data + round-1 pseudo-labels (by a labels-only teacher) within
8 px flip disagreement.

    sonichu-jax train-teacher --config configs/teacher_r1.py --data DATA --out runs/r1 \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

from sonichu_jax.configs.teacher_vitb import with_pseudo_labels
from sonichu_jax.train.configlib import PseudoLabelSet


def get_config():
    return with_pseudo_labels(PseudoLabelSet("round1.jsonl", max_disagreement_px=8.0), seed=1)
