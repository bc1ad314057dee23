"""Teacher regime r3capped (balanced): round-3 pseudo-labels capped at the 2,000 most
confident per task, and task batches drawn with equal probability (balanced weighting),
so AOP (60 % of the labels) no longer dominates the small tasks.

    sonichu-jax train-teacher --config configs/teacher_r3capped.py --data DATA --out runs/r3c \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

import dataclasses
import os

from sonichu_jax.config import CARD_TASKS
from sonichu_jax.train.configlib import PseudoLabelSet, load_config_file


def get_config():
    base = load_config_file(os.path.join(os.path.dirname(__file__), "teacher_vitb.py"))
    caps = tuple((t.name, 2000) for t in CARD_TASKS)
    pseudo = (PseudoLabelSet("round3.jsonl", max_disagreement_px=5.0, caps=caps),)
    data = dataclasses.replace(base.data, pseudo_labels=pseudo, weighting="balanced")
    return dataclasses.replace(base, data=data, seed=5)
