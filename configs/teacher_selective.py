"""Teacher regime Selective (FUGC-capped): round-3 pseudo-labels, FUGC's capped at its 500
most confident, pseudo-labelled records sampled at half the rate of labelled ones.

    sonichu-jax train-teacher --config configs/teacher_selective.py --data DATA --out runs/sel \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

from sonichu_jax.configs.teacher_vitb import with_pseudo_labels
from sonichu_jax.train.configlib import PseudoLabelSet


def get_config():
    return with_pseudo_labels(PseudoLabelSet("round3.jsonl", weight=0.5, max_disagreement_px=5.0, caps=(("FUGC", 500),)),
                              seed=4)
