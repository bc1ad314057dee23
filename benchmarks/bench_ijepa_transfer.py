"""Does I-JEPA pretraining help? A tiny teacher fine-tuned from the pretrained backbone vs
the same teacher from random initialisation, same data, steps and seed (synthetic frames).

    python benchmarks/bench_ijepa_transfer.py --work /tmp/ijepa_transfer

1. unlabelled frames: ``--frames-per-task`` synthetic frames of all nine anatomies
   (another seed than the labelled set), pretrained with configs/ijepa_tiny.py;
2. labelled set: ``--labelled-per-task`` frames of the teacher_tiny tasks;
3. configs/teacher_tiny.py trained twice for ``--teacher-steps``: ``init.kind=scratch``
   and ``init.kind=backbone`` (the pretrain run's ``backbone/``).

Prints (and with --json writes) the final weighted validation MRE of both runs, in
pixels of the 64-px frames, the pretraining loss and the target-feature std at the
first and last log window. ``--seeds`` repeats the teacher pair over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
ROOT = os.path.join(os.path.dirname(__file__), "..")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="working folder (data and runs)")
    parser.add_argument("--frames-per-task", type=int, default=120)
    parser.add_argument("--labelled-per-task", type=int, default=60)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from sonichu_jax.data.synthetic import write_synthetic_dataset
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.pretrain import BACKBONE_DIR, pretrain
    from sonichu_jax.train.supervised import train_teacher

    work = os.path.abspath(args.work)
    frames = os.path.join(work, "frames")
    labelled = os.path.join(work, "labelled")
    if not os.path.isdir(frames):
        write_synthetic_dataset(frames, args.frames_per_task, seed=1000, size=64)
    if not os.path.isdir(labelled):
        write_synthetic_dataset(labelled, args.labelled_per_task, tasks=("HC", "fetal_femur"), seed=0, size=64)

    pre_out = os.path.join(work, "pretrain")
    pre_config = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "ijepa_tiny.py")),
                                 [f"steps={args.pretrain_steps}", "log.progress=false", *args.pretrain_set])
    if not os.path.isdir(os.path.join(pre_out, BACKBONE_DIR)):
        pretrain(pre_config, os.path.join(frames, "images"), pre_out)
    with open(os.path.join(pre_out, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if '"train"' in line]

    results = {"pretrain": {k: [rows[0][k], rows[-1][k]] for k in ("loss", "target_std", "img_per_s")},
               "teacher": []}
    teacher_file = os.path.join(ROOT, "configs", "teacher_tiny.py")
    for seed in args.seeds:
        row = {"seed": seed}
        for init in ("scratch", "backbone"):
            sets = [f"steps={args.teacher_steps}", f"seed={seed}", "log.progress=false", f"init.kind={init}",
                    *args.teacher_set]
            if init == "backbone":
                sets.append(f"init.path={os.path.join(pre_out, BACKBONE_DIR)}")
            config = apply_overrides(load_config_file(teacher_file), sets)
            out = os.path.join(work, f"teacher_{init}_{seed}")
            result = train_teacher(config, labelled, out, resume=os.path.isdir(out))
            row[init] = result.val_mre
        results["teacher"].append(row)
        print(f"seed {seed}: val MRE scratch {row['scratch']:.3f} px, pretrained {row['backbone']:.3f} px")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
