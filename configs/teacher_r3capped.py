"""Teacher regime r3capped (balanced): round-3 pseudo-labels capped at each task's 2,000 most
confident, tasks drawn with equal probability, so AOP no longer dominates the small tasks.

    sonichu-jax train-teacher --config configs/teacher_r3capped.py --data DATA --out runs/r3c \
        --set init.path=runs/ijepa/backbone --set data.pseudo_dir=runs/pseudo
"""

from sonichu_jax.config import CARD_TASKS
from sonichu_jax.configs.teacher_vitb import with_pseudo_labels
from sonichu_jax.train.configlib import PseudoLabelSet


def get_config():
    caps = tuple((t.name, 2000) for t in CARD_TASKS)
    return with_pseudo_labels(PseudoLabelSet("round3.jsonl", max_disagreement_px=5.0, caps=caps), seed=5,
                              weighting="balanced")
