"""The card's whole recipe, tiny, on the embedded synthetic data (`sonichu-jax demo`).

synthetic data -> I-JEPA pretraining -> teachers under different pseudo-label regimes ->
median ensemble -> distillation -> evaluation of everything on a held-out set -> overlays.
Runs on a laptop CPU: about 5 minutes on a 2-core machine, about 2 with the quick profile.
Each stage is a function of the previous stages' outputs; `run_demo` chains them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field

import jax

from sonichu_jax.errors import InputError, SonichuError
from sonichu_jax.evaluation import MREReport
from sonichu_jax.fileio import check_output
from sonichu_jax.report import write_report
from sonichu_jax.train import presets
from sonichu_jax.train.configlib import InitConfig, PseudoLabelSet


@dataclass(frozen=True)
class Profile:
    tasks: tuple[str, ...]
    n_train: int  # labelled images per task (15 % of them validate)
    n_unlabelled: int  # per task, pseudo-labelled by the first teacher
    n_test: int  # held-out images per task for the final table
    pretrain_steps: int
    teacher_steps: int
    student_steps: int
    eval_every: int  # teachers and student validate this often: the report draws a curve


PROFILES = {
    "full": Profile(("HC", "fetal_femur", "FA"), n_train=160, n_unlabelled=80, n_test=40,
                    pretrain_steps=300, teacher_steps=300, student_steps=300, eval_every=50),
    "quick": Profile(("HC", "fetal_femur"), n_train=64, n_unlabelled=32, n_test=16,
                     pretrain_steps=30, teacher_steps=60, student_steps=60, eval_every=20),
}

# (name, init from the I-JEPA backbone, uses pseudo-labels, task weighting, seed): the
# regimes differ the way the card's teachers do, in data and initialisation.
TEACHERS = (
    ("t1_labels", True, False, "proportional", 1),
    ("t2_pseudo", True, True, "proportional", 2),
    ("t3_balanced", True, True, "balanced", 3),
)

SYNTHETIC_SIZE = 128  # pixels; models see 64x64, overlays are drawn at this size


@dataclass
class DemoResult:
    out: str
    profile: str
    columns: dict[str, MREReport]  # the final table: model name -> MRE report
    models: dict[str, str]  # model name -> checkpoint directory
    overlays: str
    test_images: int
    minutes: float = 0.0
    artefacts: dict[str, str] = field(default_factory=dict)  # what else a stage left (backbone, pseudo-labels)


# What the demo writes in its folder: ``force`` replaces these and nothing else.
DEMO_ENTRIES = ("data", "ijepa", "pseudo", "teachers", "student", "untrained", "overlays", "report.html",
                "results.json", "jax_cache")


class Stopped(SonichuError):
    """A signal stopped a stage (its checkpoint saved): the demo ends too, 128 + signal."""

    def __init__(self, what: str, signum: int):
        super().__init__(f"stopped by signal {signum} during {what}; the demo's later stages did not run")
        self.exit_code = 128 + signum


def went_on(result, what: str) -> None:
    if result.signal:
        raise Stopped(what, result.signal)


def prepare_out(out: str, force: bool) -> str:
    out = check_output(out, what="demo folder", folder=True)
    if os.path.exists(out) and os.listdir(out):
        if not force:
            raise InputError(f"{out} already exists and is not empty; choose another directory, or replace it (force)")
        for name in DEMO_ENTRIES:  # links are removed, never followed
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
    os.makedirs(out, exist_ok=True)
    # Teachers share one architecture, so their programs are identical: compile once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return out


def stage(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def make_data(out: str, profile: Profile, seed: int) -> dict[str, str]:
    from sonichu_jax.data.synthetic import write_synthetic_dataset

    stage(f"1/6 synthetic data: {', '.join(profile.tasks)} ({SYNTHETIC_SIZE} px)")
    data = {}
    for split, n, offset in (("train", profile.n_train, 0), ("unlabelled", profile.n_unlabelled, 1),
                             ("test", profile.n_test, 2)):
        data[split] = write_synthetic_dataset(os.path.join(out, "data", split), n, profile.tasks, seed=seed + offset,
                                              size=SYNTHETIC_SIZE)
        print(f"{split}: {n} images per task in {data[split]}")
    return data


def pretrain_backbone(out: str, profile: Profile, data: dict[str, str]) -> str:
    from sonichu_jax.train.pretrain import BACKBONE_DIR, pretrain

    stage("2/6 I-JEPA pretraining on the unlabelled frames")
    ijepa_dir = os.path.join(out, "ijepa")
    went_on(pretrain(presets.tiny_ijepa(profile.tasks, profile.pretrain_steps),
                     os.path.join(data["unlabelled"], "images"), ijepa_dir), "pretraining")
    return os.path.join(ijepa_dir, BACKBONE_DIR)


def train_teachers(out: str, profile: Profile, data: dict[str, str], backbone: str, pseudo_path: str) -> list[str]:
    """The teachers in order; the first one writes the pseudo-labels the others read."""
    from sonichu_jax.train.supervised import train_teacher

    stage(f"3/6 {len(TEACHERS)} teachers")
    run_dirs = []
    for name, from_backbone, use_pseudo, weighting, seed in TEACHERS:
        config = presets.tiny_teacher(profile.tasks, profile.teacher_steps)
        config = dataclasses.replace(
            config,
            init=InitConfig("backbone", backbone) if from_backbone else InitConfig(),
            data=dataclasses.replace(config.data, weighting=weighting,
                                     pseudo_labels=(PseudoLabelSet(pseudo_path),) if use_pseudo else ()),
            log=dataclasses.replace(config.log, eval_at_start=False, eval_every_steps=profile.eval_every),
            seed=seed,
        )
        print(f"--- {name}: {'I-JEPA backbone' if from_backbone else 'random init'}, "
              f"{'labels + pseudo-labels' if use_pseudo else 'labels only'}, {weighting} task sampling")
        run_dir = os.path.join(out, "teachers", name)
        went_on(train_teacher(config, data["train"], run_dir), f"teacher {name}")
        run_dirs.append(run_dir)
        if not os.path.exists(pseudo_path):
            write_pseudo(run_dir, name, data["unlabelled"], config, pseudo_path)
    return run_dirs


def write_pseudo(run_dir: str, name: str, unlabelled: str, config, pseudo_path: str) -> None:
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.pseudo_label import write_pseudo_labels

    records = load_source(unlabelled, tasks=config.model.tasks, log=None)
    counts = write_pseudo_labels(SonichuModel.from_pretrained(os.path.join(run_dir, "model")), list(records),
                                 pseudo_path)
    print(f"pseudo-labels from {name}: {counts['written']} written, {counts['rejected']} rejected")


def distill_student(out: str, profile: Profile, data: dict[str, str], backbone: str, teacher_dirs: list[str],
                    pseudo_path: str) -> str:
    from sonichu_jax.train.distill import distill

    stage("4/6 distillation: the student learns the teachers' coordinate-wise median")
    student_dir = os.path.join(out, "student")
    config = presets.tiny_distill(profile.tasks, profile.student_steps)
    config = dataclasses.replace(
        config, init=InitConfig("backbone", backbone),
        data=dataclasses.replace(config.data, pseudo_labels=(PseudoLabelSet(pseudo_path),)),
        log=dataclasses.replace(config.log, eval_at_start=False, eval_every_steps=profile.eval_every), seed=10,
    )
    went_on(distill(config, teacher_dirs, data["train"], student_dir), "distillation")
    return os.path.join(student_dir, "model")


def evaluate_all(out: str, profile: Profile, test_dir: str, models: dict[str, str]):
    """(columns of the final table, the test records): each model alone, and the
    teachers' median ensemble before the student."""
    from sonichu_jax.checkpoint import init_model
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.evaluation import evaluate_models
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor

    stage("5/6 evaluation on the held-out test set (flip TTA, original pixels)")
    untrained = init_model(presets.tiny_model(profile.tasks), seed=0)
    untrained.eval()
    untrained.save_pretrained(models["untrained"])
    size = untrained.cfg.image_size
    SonichuPreprocessor(size=size).save_pretrained(models["untrained"])
    records = [r for r in load_source(test_dir, tasks=untrained.cfg.tasks, log=None) if r.has_label]
    loaded = {name: (SonichuModel.from_pretrained(p), SonichuPreprocessor(size=size)) for name, p in models.items()}
    teachers = {name: loaded[name] for name, *_ in TEACHERS}
    columns = {"untrained": evaluate_models({"untrained": loaded["untrained"]}, records, progress=False)["untrained"]}
    columns.update(evaluate_models(teachers, records, ensemble_method="median", progress=False))
    columns["student"] = evaluate_models({"student": loaded["student"]}, records, progress=False)["student"]
    return columns, records


def draw_overlays(out: str, profile: Profile, student_dir: str, records) -> str:
    from sonichu_jax.inference import iter_predictions
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.overlay import save_overlay
    from sonichu_jax.preprocess import SonichuPreprocessor

    stage("6/6 student predictions with overlays")
    overlay_dir = os.path.join(out, "overlays")
    student = SonichuModel.from_pretrained(student_dir)
    prep = SonichuPreprocessor(size=student.cfg.image_size)
    for task in profile.tasks:
        sample = [r for r in records if r.task == task][:3]
        for pred in iter_predictions(student, prep, [r.image for r in sample], task, progress=False):
            stem = os.path.splitext(os.path.basename(pred.name))[0]
            save_overlay(pred.name, pred.pixels, task, os.path.join(overlay_dir, f"{stem}_{task}.png"))
    return overlay_dir


def run_demo(out: str, *, quick: bool = False, seed: int = 0, force: bool = False) -> DemoResult:
    """Every stage of the recipe into ``out``; returns the final table and where
    everything went."""
    name = "quick" if quick else "full"
    profile, started = PROFILES[name], time.perf_counter()
    out = prepare_out(out, force)
    data = make_data(out, profile, seed)
    backbone = pretrain_backbone(out, profile, data)
    pseudo_path = os.path.join(out, "pseudo", "round1.jsonl")
    teacher_dirs = train_teachers(out, profile, data, backbone, pseudo_path)
    student = distill_student(out, profile, data, backbone, teacher_dirs, pseudo_path)
    models = {"untrained": os.path.join(out, "untrained")}
    models.update({name: os.path.join(d, "model") for (name, *_), d in zip(TEACHERS, teacher_dirs)})
    models["student"] = student
    columns, records = evaluate_all(out, profile, data["test"], models)
    overlays = draw_overlays(out, profile, student, records)
    report = write_report([out], os.path.join(out, "report.html"), progress=False).path
    return DemoResult(out, name, columns, models, overlays, len(records), (time.perf_counter() - started) / 60,
                      {"backbone": backbone, "pseudo_labels": pseudo_path, "report": report})
