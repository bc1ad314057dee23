"""Does the study's student catch the best teacher with a longer schedule?

    python benchmarks/student_steps.py --study runs/recipe_study --seed 0 --steps 1600 \
        --out runs/student_steps [--no-teacher]

Reuses one seed of a finished `recipe_study.py` run (its data, I-JEPA backbone, five
teachers and pseudo-labels, read only) and distils the student again exactly as the study
does, only with ``--steps`` steps (the schedule stretches with them, as `--student-steps`
would). Scores it on the seed's held-out test set as the study does (flip TTA, weighted
and unweighted MRE) and prints one JSON row, also written to OUT/seedN/<folder>/row.json.
Pass the study's other flags (``--labels``, ``--set`` ...) when it ran with them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import recipe_study  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="the recipe_study --out folder")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True, help="new runs go here (never into --study)")
    parser.add_argument("--no-teacher", action="store_true", help="the student with teacher_weight=0")
    args, rest = parser.parse_known_args(argv)
    study_dir, out_dir = os.path.realpath(args.study), os.path.realpath(args.out)
    if os.path.commonpath([study_dir, out_dir]) in (study_dir, out_dir):
        parser.error(f"--out {args.out} overlaps --study {args.study}; the study's runs are read only")
    study_args = recipe_study.parse_args(rest + ["--out", args.study, "--student-steps", str(args.steps)])
    profile = recipe_study.profile_of(study_args)

    import jax

    from sonichu_jax.data.sources import load_source
    from sonichu_jax.evaluation import predict_records, score
    from sonichu_jax.fileio import write_json
    from sonichu_jax.train import recipe

    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(args.out), "jax_cache"))
    study = recipe_study.seed_paths(study_args, args.seed)
    root = os.path.join(os.path.abspath(args.out), f"seed{args.seed}")
    folder = f"{'student_no_teacher' if args.no_teacher else 'student'}_{args.steps}"
    five = [study["models"][f"teacher:{r}"] for r in recipe_study.REGIMES]
    backbone = os.path.join(study["root"], "ijepa", "backbone")
    t0 = time.perf_counter()
    model_dir = recipe.distill_student(root, profile, study["data"], backbone, five, study["pseudo_dir"],
                                       teacher_weight=0.0 if args.no_teacher else 0.5, folder=folder)
    minutes = (time.perf_counter() - t0) / 60

    model, prep = recipe_study.load(model_dir)
    test = [r for r in load_source(study["data"]["test"], tasks=model.cfg.tasks, log=None) if r.has_label]
    name = "student:no_teacher" if args.no_teacher else "student"
    out = recipe_study.row(args.seed, name, score(test, predict_records(model, prep, test, progress=False)),
                           steps=args.steps, train_minutes=minutes, load_average=os.getloadavg())
    write_json(os.path.join(root, folder, "row.json"), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
