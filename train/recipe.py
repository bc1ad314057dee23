"""The card's whole recipe, tiny, on the embedded synthetic data (`sonichu-jax demo`).

synthetic data -> I-JEPA pretraining -> teachers under different pseudo-label regimes ->
median ensemble -> distillation -> evaluation of everything on a held-out set -> overlays.
Runs on a laptop CPU: about 4 minutes on a 2-core machine, about 2 with the quick profile.
Each stage is a function of the previous stages' outputs; `run_demo` chains them.
"""

from __future__ import annotations

import dataclasses
import json
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
from sonichu_jax.train.configlib import InitConfig


@dataclass(frozen=True)
class Profile:
    tasks: tuple[str, ...]
    n_train: tuple[int, ...]  # labelled images per task, uneven as in FM_UIA (15 % of them validate)
    n_unlabelled: int  # per task: I-JEPA frames, pseudo-labelled by each round's teacher
    n_test: int  # held-out images per task for the final table
    pretrain_steps: int
    teacher_steps: int
    student_steps: int
    eval_every: int  # teachers and student validate this often: the report draws a curve
    overrides: tuple[str, ...] = ()  # `--set` assignments for every teacher and student config
    pretrain_overrides: tuple[str, ...] = ()  # ... and for the I-JEPA config


PROFILES = {
    "full": Profile(("AOP", "HC", "FUGC"), n_train=(120, 60, 30), n_unlabelled=120, n_test=40,
                    pretrain_steps=200, teacher_steps=600, student_steps=600, eval_every=200),
    "quick": Profile(("HC", "fetal_femur"), n_train=(48, 24), n_unlabelled=32, n_test=16,
                     pretrain_steps=20, teacher_steps=60, student_steps=60, eval_every=20),
}

# The card's five regimes, as their config files define them (pseudo-label round,
# threshold, caps, weight, task weighting, seed), and the round each one reads. A
# labels-only teacher, R0, writes round 1; R1 writes round 2, R2 round 3 (docs/recipe.md).
REGIMES = {"R1": "teacher_r1", "R2": "teacher_r2", "R3": "teacher_r3", "selective": "teacher_selective",
           "r3capped": "teacher_r3capped"}
WRITES = {"R0": "round1.jsonl", "R1": "round2.jsonl", "R2": "round3.jsonl"}
# Synthetic data as multi-centre B-mode data looks (sonichu_jax.data.synthetic): labels
# carry observer noise; unlabelled and test frames are scored against the truth.
ACQUISITION = dict(devices=6, shadow_rate=0.3)
LABEL_NOISE = dict(label_noise_px=3.0, slip_rate=0.03)

SYNTHETIC_SIZE = 128  # pixels; models see 64x64, overlays are drawn at this size
CARD_SIZE = 256  # the card's input size: the regimes' pixel thresholds are scaled from it
CARD_POOL = 4000  # round-3 pseudo-labels per task the regimes' caps are scaled from (ours)


def regime_config(regime: str, profile: Profile, backbone: str | None, pseudo_dir: str, steps: int | None = None):
    """The tiny teacher of a regime ("R0" or a `REGIMES` key), from the I-JEPA backbone
    or (``backbone`` None) from scratch. Thresholds scale with the image size, caps with
    the unlabelled pool; ``profile.overrides`` come last."""
    from sonichu_jax.train.configlib import apply_overrides, load_config_file

    tasks = profile.tasks
    config = presets.tiny_teacher(tasks, steps or profile.teacher_steps)
    pseudo, weighting, seed = (), "proportional", 0
    if regime != "R0":
        card = load_config_file(REGIMES[regime])
        px, pool = SYNTHETIC_SIZE / CARD_SIZE, profile.n_unlabelled / CARD_POOL
        pseudo = tuple(dataclasses.replace(
            p, max_disagreement_px=p.max_disagreement_px * px,
            caps=tuple((t, max(1, round(n * pool))) for t, n in p.caps if t in tasks)) for p in card.data.pseudo_labels)
        weighting, seed = card.data.weighting, card.seed
    config = dataclasses.replace(
        config, init=InitConfig("backbone", backbone) if backbone else InitConfig(),
        data=dataclasses.replace(config.data, weighting=weighting, pseudo_labels=pseudo, pseudo_dir=pseudo_dir),
        log=dataclasses.replace(config.log, eval_at_start=False, eval_every_steps=profile.eval_every), seed=seed,
        # a save costs as much as ~30 tiny steps; the recipe never resumes, so save only to finish
        checkpoint=dataclasses.replace(config.checkpoint, every_steps=config.steps),
    )
    return apply_overrides(config, profile.overrides)


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
    stage(f"1/6 synthetic data: {', '.join(profile.tasks)} ({SYNTHETIC_SIZE} px)")
    counts = dict(zip(profile.tasks, profile.n_train))
    data = write_data(os.path.join(out, "data"), profile.tasks, counts, profile.n_unlabelled, profile.n_test, seed)
    print(f"train: {counts} labelled; unlabelled: {profile.n_unlabelled}, test: {profile.n_test} per task")
    return data


def write_data(root: str, tasks, n_train: dict[str, int], n_unlabelled: int, n_test: int, seed: int) -> dict[str, str]:
    """train (labelled, ``n_train[task]`` per task, observed labels), unlabelled and test
    (true labels, so pseudo-labels and predictions are scored against the truth)."""
    from sonichu_jax.data.sources import MANIFEST_NAME
    from sonichu_jax.data.synthetic import Acquisition, write_synthetic_dataset
    from sonichu_jax.fileio import atomic_path

    data = {}
    for split, n, offset, labels in (("train", max(n_train.values()), 0, LABEL_NOISE), ("unlabelled", n_unlabelled, 1, {}),
                                     ("test", n_test, 2, {})):
        data[split] = write_synthetic_dataset(os.path.join(root, split), n, tasks, seed=3 * seed + offset,
                                              size=SYNTHETIC_SIZE, acquisition=Acquisition(**ACQUISITION, **labels))
    manifest = os.path.join(data["train"], MANIFEST_NAME)  # the first n_train[task] frames of each task
    with open(manifest) as fh:
        lines = [line for line in fh if int(json.loads(line)["id"].rsplit("_", 1)[1]) < n_train[json.loads(line)["task"]]]
    with atomic_path(manifest) as tmp, open(tmp, "w") as fh:
        fh.writelines(lines)
    return data


def pretrain_backbone(out: str, profile: Profile, data: dict[str, str]) -> str:
    from sonichu_jax.train.configlib import apply_overrides
    from sonichu_jax.train.pretrain import BACKBONE_DIR, pretrain

    stage("2/6 I-JEPA pretraining on the unlabelled frames")
    ijepa_dir = os.path.join(out, "ijepa")
    config = apply_overrides(presets.tiny_ijepa(profile.tasks, profile.pretrain_steps), profile.pretrain_overrides)
    went_on(pretrain(config, os.path.join(data["unlabelled"], "images"), ijepa_dir), "pretraining")
    return os.path.join(ijepa_dir, BACKBONE_DIR)


def train_teachers(out: str, profile: Profile, data: dict[str, str], backbone: str | None, pseudo_dir: str,
                   regimes=("R0", *REGIMES), folder: str = "teachers") -> dict[str, str]:
    """Each regime's run directory, in order; R0, R1 and R2 write the next round of
    pseudo-labels (when it is not there yet) for the regimes after them."""
    from sonichu_jax.train.supervised import train_teacher

    stage(f"3/6 teachers: {', '.join(regimes)}" + ("" if backbone else " (from scratch)"))
    run_dirs = {}
    for regime in regimes:
        config = regime_config(regime, profile, backbone, pseudo_dir)
        sets = ", ".join(f"{p.path} <= {p.max_disagreement_px:g} px" for p in config.data.pseudo_labels)
        print(f"--- {regime}: labels + {sets}, {config.data.weighting}" if sets else f"--- {regime}: labels only")
        run_dirs[regime] = os.path.join(out, folder, regime)
        went_on(train_teacher(config, data["train"], run_dirs[regime]), f"teacher {regime}")
        pseudo_path = os.path.join(pseudo_dir, WRITES.get(regime, ""))
        if regime in WRITES and not os.path.exists(pseudo_path):
            write_pseudo(run_dirs[regime], regime, data["unlabelled"], config, pseudo_path)
    return run_dirs


def write_pseudo(run_dir: str, name: str, unlabelled: str, config, pseudo_path: str) -> None:
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.pseudo_label import write_pseudo_labels

    model = SonichuModel.from_pretrained(os.path.join(run_dir, "model"))
    counts = write_pseudo_labels(model, list(load_source(unlabelled, tasks=config.model.tasks, log=None)), pseudo_path)
    print(f"pseudo-labels from {name}: {counts['written']} written to {pseudo_path}")


def distill_student(out: str, profile: Profile, data: dict[str, str], backbone: str, teacher_dirs: list[str],
                    pseudo_dir: str, teacher_weight: float = 0.5, folder: str = "student") -> str:
    """The student on R3's data (labels and its round-3 pseudo-labels), from the backbone."""
    from sonichu_jax.train.distill import DistillConfig, DistillSettings, distill

    stage(f"4/6 distillation: the student learns the {len(teacher_dirs)} teachers' coordinate-wise median")
    student_dir = os.path.join(out, folder)
    r3 = regime_config("R3", profile, backbone, pseudo_dir, profile.student_steps)
    fields = {f.name: getattr(r3, f.name) for f in dataclasses.fields(r3)}
    config = DistillConfig(**{**fields, "seed": 10}, distill=DistillSettings(teacher_weight=teacher_weight))
    went_on(distill(config, teacher_dirs, data["train"], student_dir), "distillation")
    return os.path.join(student_dir, "model")


def evaluate_all(out: str, profile: Profile, test_dir: str, models: dict[str, str]):
    """(columns of the final table, the test records): each model alone, and the five
    teachers' median ensemble before the student."""
    from sonichu_jax.checkpoint import init_model
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.evaluation import evaluate_models
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor

    stage("5/6 evaluation on the held-out test set (flip TTA, original pixels)")
    untrained = init_model(regime_config("R0", profile, None, "").model, seed=0)
    untrained.eval()
    untrained.save_pretrained(models["untrained"])
    size = untrained.cfg.image_size
    SonichuPreprocessor(size=size).save_pretrained(models["untrained"])
    records = [r for r in load_source(test_dir, tasks=untrained.cfg.tasks, log=None) if r.has_label]
    loaded = {name: (SonichuModel.from_pretrained(p), SonichuPreprocessor(size=size)) for name, p in models.items()}
    teachers = {name: loaded[name] for name in REGIMES}
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
    pseudo_dir = os.path.join(out, "pseudo")
    teacher_dirs = train_teachers(out, profile, data, backbone, pseudo_dir)
    student = distill_student(out, profile, data, backbone, [teacher_dirs[r] for r in REGIMES], pseudo_dir)
    models = {"untrained": os.path.join(out, "untrained")}
    models.update({name: os.path.join(d, "model") for name, d in teacher_dirs.items() if name in REGIMES})
    models["student"] = student
    columns, records = evaluate_all(out, profile, data["test"], models)
    overlays = draw_overlays(out, profile, student, records)
    runs = [os.path.dirname(backbone), *(teacher_dirs[r] for r in REGIMES), os.path.dirname(student)]  # not R0
    report = write_report(runs, os.path.join(out, "report.html"), data=data["test"], progress=False).path
    return DemoResult(out, name, columns, models, overlays, len(records), (time.perf_counter() - started) / 60,
                      {"backbone": backbone, "pseudo_labels": pseudo_dir, "report": report})
