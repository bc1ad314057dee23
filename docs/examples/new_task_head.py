"""A new task head fine-tuned from a trained teacher: ``init.new_heads=fresh``.

    python docs/examples/new_task_head.py TEACHER_MODEL_DIR DATA OUT

``TEACHER_MODEL_DIR`` is a finished run's ``model/`` (e.g. from heatmap_teacher.py).
The example writes a CSV of its own task ``NEW`` (3 keypoints: the first three HC
points of the synthetic images in ``DATA``), configures the teacher's tasks plus NEW, and
trains from the teacher's weights: the backbone and the old heads start trained, NEW's
head starts fresh (printed). Without ``new_heads=fresh`` the run is refused, naming NEW.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys

from sonichu_jax import ModelConfig, TaskSpec
from sonichu_jax.data.sources import load_source
from sonichu_jax.train.configlib import InitConfig, LogConfig
from sonichu_jax.train.presets import tiny_teacher
from sonichu_jax.train.supervised import train_teacher


def write_new_task_csv(data: str, path: str) -> str:
    """One FM_UIA-style CSV (``point_{i}_xy`` columns) for task NEW."""
    records = [r for r in load_source(data, log=None).records if r.task == "HC"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "point_0_xy", "point_1_xy", "point_2_xy"])
        for r in records:
            writer.writerow([os.path.abspath(r.image)] + [json.dumps([float(v) for v in p]) for p in r.keypoints[:3]])
    return path


def finetune(teacher: str, data: str, out: str, steps: int = 40):
    old = ModelConfig.load(teacher)
    model = old.replace(tasks=(*old.tasks, TaskSpec("NEW", 3)))
    config = dataclasses.replace(
        tiny_teacher(steps=steps), model=model, init=InitConfig("pretrained", teacher, new_heads="fresh"),
        log=LogConfig(every_steps=10, eval_every_steps=0, progress=False, tensorboard=False))
    os.makedirs(out, exist_ok=True)
    labels = write_new_task_csv(data, os.path.join(out, "NEW.csv"))
    return train_teacher(config, labels, os.path.join(out, "run"))


if __name__ == "__main__":
    result = finetune(*sys.argv[1:4])
    print(f"NEW after {result.step} steps: validation MRE {result.val_mre:.2f} px")
