"""One labels-only teacher (the study's R0) on the recipe study's data, against the
`mean_label` baseline: is it image-specific after N steps? (docs/recipe.md, "Why the
first study's teachers learned nothing image-specific".)

    python benchmarks/teacher_probe.py --steps 800 --out runs/probe_800 [--set optim.lr=1e-3] [--plain]

Prints the test MRE (flip TTA) of the teacher and of `mean_label` (each task's mean
training label for every frame), and per task how much the predictions move across
frames relative to the truth and how well they follow it (correlation of the centred
predictions with the centred truth: ~0 for a constant guess, 1 for a perfect one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the teacher's run folder (new)")
    parser.add_argument("--data", default="runs/probe_data", help="data folder, written once per seed and --plain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=["AOP", "HC", "FUGC"])
    parser.add_argument("--labels", type=int, nargs="+", default=[120, 60, 30])
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--plain", action="store_true", help="the generator without devices, shadows, label noise")
    args = parser.parse_args(argv)

    from sonichu_jax.data.sources import load_source
    from sonichu_jax.evaluation import predict_records, score
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor
    from sonichu_jax.train import recipe
    from sonichu_jax.train.supervised import train_teacher

    if args.plain:  # this process only: the plain generator and exact labels
        recipe.ACQUISITION, recipe.LABEL_NOISE = {}, {}
    profile = recipe.Profile(tuple(args.tasks), tuple(args.labels), 4, args.test, 0, args.steps, 0, args.steps,
                             tuple(args.overrides))
    root = os.path.join(args.data, f"seed{args.seed}{'_plain' if args.plain else ''}")
    data = {s: os.path.join(root, s) for s in ("train", "unlabelled", "test")}
    if not os.path.exists(data["test"]):
        data = recipe.write_data(root, profile.tasks, dict(zip(profile.tasks, profile.n_train)), 4, args.test,
                                 args.seed)
    config = recipe.regime_config("R0", profile, None, "")
    train_teacher(config, data["train"], args.out)

    tasks = config.model.tasks
    test = [r for r in load_source(data["test"], tasks=tasks, log=None) if r.has_label]
    train = load_source(data["train"], tasks=tasks, log=None)
    means = {t: np.mean([r.keypoints for r in train if r.task == t], axis=0) for t in args.tasks}
    model = SonichuModel.from_pretrained(os.path.join(args.out, "model"))
    preds = predict_records(model, SonichuPreprocessor(size=model.cfg.image_size), test, progress=False)
    result = {"steps": args.steps, "overrides": args.overrides, "plain": args.plain,
              "teacher": score(test, preds).weighted_px, "mean_label": score(test, [means[r.task] for r in test]).weighted_px}
    for task in args.tasks:
        idx = [i for i, r in enumerate(test) if r.task == task]
        p = np.stack([preds[i] for i in idx])
        p -= p.mean(0)
        y = np.stack([test[i].keypoints for i in idx])
        y -= y.mean(0)
        result[task] = {"spread_ratio": float(np.sqrt((p ** 2).sum(-1).mean() / (y ** 2).sum(-1).mean())),
                        "follows_truth": float(np.corrcoef(p.ravel(), y.ravel())[0, 1])}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
