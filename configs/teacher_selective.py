"""Teacher regime Selective (FUGC-capped): round-3 pseudo-labels, but FUGC, whose
pseudo-labels would otherwise swamp its few labels, keeps only its 500 most confident
ones; pseudo-labelled records are sampled at half the rate of labelled ones.

    sonichu-jax train-teacher --config configs/teacher_selective.py --data DATA --out runs/sel \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

import dataclasses
import os

from sonichu_jax.train.configlib import PseudoLabelSet, load_config_file


def get_config():
    base = load_config_file(os.path.join(os.path.dirname(__file__), "teacher_vitb.py"))
    pseudo = (PseudoLabelSet("round3.jsonl", weight=0.5, max_disagreement_px=5.0, caps=(("FUGC", 500),)),)
    return dataclasses.replace(base, data=dataclasses.replace(base.data, pseudo_labels=pseudo), seed=4)
