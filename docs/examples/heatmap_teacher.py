"""A teacher trained with the heatmap-MSE loss through the normal command, then resumed.

The commands it runs are the ones you would type:

    sonichu-jax make-synthetic data/syn --n 200 --tasks HC fetal_femur --size 64
    sonichu-jax train-teacher --config teacher_tiny --data data/syn --out runs/hm \\
        --set loss.kind=heatmap_mse --set loss.sigma=2 --set model.decoder=argmax --set steps=200
    sonichu-jax train-teacher ... --resume --set steps=400       # the same options, a longer schedule

``loss.kind`` is recorded in runs/hm/train_config.json: resuming with another loss is
refused (exit 2). ``model.decoder=argmax`` goes into the exported config.json, so
validation, ``predict`` and ``evaluate`` decode the heatmaps by their maximum.

    python docs/examples/heatmap_teacher.py DATA OUT [STEPS]
"""

from __future__ import annotations

import sys

from sonichu_jax.cli import main


def train(data: str, out: str, steps: int, *extra: str, resume: bool = False) -> int:
    sets = ["loss.kind=heatmap_mse", "loss.sigma=2", "model.decoder=argmax", f"steps={steps}", *extra]
    argv = ["train-teacher", "--config", "teacher_tiny", "--data", data, "--out", out]
    argv += [arg for s in sets for arg in ("--set", s)] + (["--resume"] if resume else [])
    print("sonichu-jax", " ".join(argv))
    return main(argv)


if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    assert train(data, out, steps) == 0
    assert train(data, out, 2 * steps, resume=True) == 0
