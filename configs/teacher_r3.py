"""Teacher regime R3: labelled data + round-3 pseudo-labels (written by the R2 teacher),
all tasks, flip disagreement <= 5.0 px, sampled like labelled records.

    sonichu-jax train-teacher --config configs/teacher_r3.py --data DATA --out runs/r3 \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

import dataclasses
import os

from sonichu_jax.train.configlib import PseudoLabelSet, load_config_file


def get_config():
    base = load_config_file(os.path.join(os.path.dirname(__file__), "teacher_vitb.py"))
    pseudo = (PseudoLabelSet("round3.jsonl", max_disagreement_px=5.0),)
    return dataclasses.replace(base, data=dataclasses.replace(base.data, pseudo_labels=pseudo), seed=3)
