"""`sonichu-jax demo`: the card's whole recipe, tiny, on the embedded synthetic data.

synthetic data -> I-JEPA pretraining -> teachers under different pseudo-label regimes ->
median ensemble -> distillation -> evaluation of everything on a held-out set -> overlays.
Runs on a laptop CPU: about 5 minutes on a 2-core machine, about 2 with --quick.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass

HELP = "run the whole recipe on synthetic data with tiny models (CPU): pretrain, teachers, ensemble, student"


@dataclass(frozen=True)
class Profile:
    tasks: tuple[str, ...]
    n_train: int  # labelled images per task (15 % of them validate)
    n_unlabelled: int  # per task, pseudo-labelled by the first teacher
    n_test: int  # held-out images per task for the final table
    pretrain_steps: int
    teacher_steps: int
    student_steps: int


PROFILES = {
    "full": Profile(("HC", "fetal_femur", "FA"), n_train=160, n_unlabelled=80, n_test=40,
                    pretrain_steps=300, teacher_steps=300, student_steps=300),
    "quick": Profile(("HC", "fetal_femur"), n_train=64, n_unlabelled=32, n_test=16,
                     pretrain_steps=30, teacher_steps=60, student_steps=60),
}

# (name, init from the I-JEPA backbone, uses pseudo-labels, task weighting, seed): the
# regimes differ the way the card's teachers do, in data and initialisation.
TEACHERS = (
    ("t1_labels", True, False, "proportional", 1),
    ("t2_pseudo", True, True, "proportional", 2),
    ("t3_balanced", True, True, "balanced", 3),
)

SYNTHETIC_SIZE = 128  # pixels; models see 64x64, overlays are drawn at this size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="where everything goes (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 2 minutes) for CI")
    parser.add_argument("--force", action="store_true", help="delete --out first if it exists")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--json", metavar="FILE", help="also write the final table as JSON (default OUT/results.json)")


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import jax

    from sonichu_jax.checkpoint import init_model
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.synthetic import write_synthetic_dataset
    from sonichu_jax.errors import InputError
    from sonichu_jax.evaluation import evaluate_models
    from sonichu_jax.fileio import write_json
    from sonichu_jax.inference import iter_predictions
    from sonichu_jax.metrics import format_table, table_dict
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.overlay import save_overlay
    from sonichu_jax.preprocess import SonichuPreprocessor
    from sonichu_jax.train import presets
    from sonichu_jax.train.configlib import InitConfig, PseudoLabelSet
    from sonichu_jax.train.distill import distill
    from sonichu_jax.train.ijepa_loop import pretrain
    from sonichu_jax.train.pseudo_label import write_pseudo_labels
    from sonichu_jax.train.teacher import train_teacher

    profile = PROFILES["quick" if args.quick else "full"]
    out = os.path.abspath(args.out)
    if os.path.exists(out) and os.listdir(out):
        if not args.force:
            raise InputError(f"{out} already exists and is not empty; pass --force to replace it")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    # Teachers share one architecture, so their programs are identical: compile once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    started = time.perf_counter()
    tasks = profile.tasks
    data = {}

    _stage(f"1/6 synthetic data: {', '.join(tasks)} ({SYNTHETIC_SIZE} px)")
    for split, n, seed in (("train", profile.n_train, args.seed), ("unlabelled", profile.n_unlabelled, args.seed + 1),
                           ("test", profile.n_test, args.seed + 2)):
        data[split] = write_synthetic_dataset(os.path.join(out, "data", split), n, tasks, seed=seed,
                                              size=SYNTHETIC_SIZE)
        print(f"{split}: {n} images per task in {data[split]}")

    _stage("2/6 I-JEPA pretraining on the unlabelled frames")
    ijepa_dir = os.path.join(out, "ijepa")
    pretrain(presets.tiny_ijepa(tasks, profile.pretrain_steps), os.path.join(data["unlabelled"], "images"), ijepa_dir)
    backbone = os.path.join(ijepa_dir, "backbone")

    _stage(f"3/6 {len(TEACHERS)} teachers")
    teacher_dirs = []
    pseudo_path = os.path.join(out, "pseudo", "round1.jsonl")
    for name, from_backbone, use_pseudo, weighting, seed in TEACHERS:
        config = presets.tiny_teacher(tasks, profile.teacher_steps)
        pseudo = (PseudoLabelSet(pseudo_path),) if use_pseudo else ()
        config = dataclasses.replace(
            config,
            init=InitConfig("backbone", backbone) if from_backbone else InitConfig(),
            data=dataclasses.replace(config.data, weighting=weighting, pseudo_labels=pseudo),
            log=dataclasses.replace(config.log, eval_at_start=False),
            seed=seed,
        )
        print(f"--- {name}: {'I-JEPA backbone' if from_backbone else 'random init'}, "
              f"{'labels + pseudo-labels' if use_pseudo else 'labels only'}, {weighting} task sampling")
        run_dir = os.path.join(out, "teachers", name)
        train_teacher(config, data["train"], run_dir)
        teacher_dirs.append(run_dir)
        if not os.path.exists(pseudo_path):
            unlabelled = load_source(data["unlabelled"], tasks=config.model.tasks, log=None)
            counts = write_pseudo_labels(SonichuModel.from_pretrained(os.path.join(run_dir, "model")),
                                         list(unlabelled), pseudo_path)
            print(f"pseudo-labels from {name}: {counts['written']} written, {counts['rejected']} rejected")

    _stage("4/6 distillation: the student learns the teachers' coordinate-wise median")
    student_dir = os.path.join(out, "student")
    student_cfg = presets.tiny_distill(tasks, profile.student_steps)
    student_cfg = dataclasses.replace(
        student_cfg, init=InitConfig("backbone", backbone),
        data=dataclasses.replace(student_cfg.data, pseudo_labels=(PseudoLabelSet(pseudo_path),)),
        log=dataclasses.replace(student_cfg.log, eval_at_start=False), seed=10,
    )
    distill(student_cfg, teacher_dirs, data["train"], student_dir)

    _stage("5/6 evaluation on the held-out test set (flip TTA, original pixels)")
    untrained_dir = os.path.join(out, "untrained")
    untrained = init_model(presets.tiny_model(tasks), seed=0)
    untrained.eval()
    untrained.save_pretrained(untrained_dir)
    SonichuPreprocessor(size=untrained.cfg.image_size).save_pretrained(untrained_dir)
    test_records = [r for r in load_source(data["test"], tasks=untrained.cfg.tasks, log=None) if r.has_label]
    models = {"untrained": untrained_dir}
    models.update({name: os.path.join(d, "model") for (name, *_), d in zip(TEACHERS, teacher_dirs)})
    loaded = {name: (SonichuModel.from_pretrained(p), SonichuPreprocessor(size=untrained.cfg.image_size))
              for name, p in models.items()}
    teachers_only = {name: loaded[name] for name, *_ in TEACHERS}
    columns = {"untrained": evaluate_models({"untrained": loaded["untrained"]}, test_records, progress=False)["untrained"]}
    columns.update(evaluate_models(teachers_only, test_records, ensemble_method="median", progress=False))
    student = SonichuModel.from_pretrained(os.path.join(student_dir, "model"))
    prep = SonichuPreprocessor(size=student.cfg.image_size)
    columns["student"] = evaluate_models({"student": (student, prep)}, test_records, progress=False)["student"]

    _stage("6/6 student predictions with overlays")
    overlay_dir = os.path.join(out, "overlays")
    for task in tasks:
        sample = [r for r in test_records if r.task == task][:3]
        for pred in iter_predictions(student, prep, [r.image for r in sample], task, progress=False):
            stem = os.path.splitext(os.path.basename(pred.name))[0]
            save_overlay(pred.name, pred.pixels, task, os.path.join(overlay_dir, f"{stem}_{task}.png"))

    minutes = (time.perf_counter() - started) / 60
    print(f"\n=== results: MRE in pixels of the {SYNTHETIC_SIZE} px test images ({len(test_records)} images)")
    print(format_table(columns))
    results = table_dict(columns)
    write_json(args.json or os.path.join(out, "results.json"),
               {"profile": "quick" if args.quick else "full", "minutes": round(minutes, 2), "results": results,
                "models": {**models, "student": os.path.join(student_dir, "model")}})
    print(f"\ncheckpoints: {ijepa_dir}/backbone, {out}/teachers/*/model, {student_dir}/model")
    print(f"overlays:    {overlay_dir}")
    print(f"results:     {args.json or os.path.join(out, 'results.json')}")
    from sonichu_jax.report import write_report

    print(f"report:      {write_report([out], os.path.join(out, 'report.html'), progress=False).path}")
    print(f"took {minutes:.1f} min", file=sys.stderr)
    return 0
