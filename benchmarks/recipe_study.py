"""Does each stage of the card's recipe earn its place? The whole recipe, small, over seeds.

    python benchmarks/recipe_study.py --seeds 0 1 2 --json study.json

Per seed, on synthetic multi-centre B-mode data (`sonichu_jax.data.synthetic`: six
devices, acoustic shadows, observer label noise; few labels, uneven across tasks; many
more unlabelled frames; a held-out test set scored against the true keypoints):

1. I-JEPA pretraining on the unlabelled frames;
2. the card's five regimes (R1, R2, R3, selective, r3capped) as teachers from the
   backbone, with R0 (labels only), R1 and R2 writing the pseudo-label rounds
   (`sonichu_jax.train.recipe`, the demo's stages);
3. the same five regimes from scratch (same pseudo-label files: only the start differs);
4. the student (median of the five teachers, ``loss_real + 0.5 * loss_teacher`` on R3's
   data) and the student with ``teacher_weight=0``;
5. on the test set with flip TTA: untrained, every teacher, the best teacher on
   validation, the median of the best four on validation and of all five, the student,
   the teachers' weight average (soup), the scratch teachers, the no-teacher student.

Writes ``--json`` (one row per seed and model), ``OUT/table.md`` (mean +- standard
deviation over seeds, and the card's claims as gaps between rows), ``OUT/seed*/analysis.json`` (why an effect
does or does not appear: teachers' error correlation, bias and spread of their errors,
pseudo-label distance to the truth per regime, what the teacher term adds) and
``OUT/seed*/report.html`` (`sonichu-jax report` of the seed's runs). Scale up with
``--labels``, ``--unlabelled``, ``--*-steps``, ``--set``/``--pretrain-set`` (config
overrides, e.g. ``--set model.width=192 --pretrain-set model.width=192``). Seeds can run
as separate processes (``--seeds 1 --json rows1.json`` each, same ``--out``) and be
joined with ``--merge rows0.json rows1.json ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

REGIMES = ("R1", "R2", "R3", "selective", "r3capped")
PASSES = {"ensemble:4": 8, "ensemble:5": 10, "mean_label": 0}  # every other model: 2 (flip TTA)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["AOP", "HC", "FUGC"])
    parser.add_argument("--labels", type=int, nargs="+", default=[120, 60, 30],
                        help="labelled frames per task, in --tasks order (15 %% of them validate)")
    parser.add_argument("--unlabelled", type=int, default=200, help="unlabelled frames per task")
    parser.add_argument("--test", type=int, default=40, help="held-out test frames per task")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--student-steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--no-scratch", action="store_true",
                        help="leave out the scratch:* rows (five teachers fewer per seed, for longer schedules)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override in every teacher and student config")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/recipe_study", help="run folders, table, analysis, report")
    parser.add_argument("--json", help="the rows as JSON (default OUT/study.json)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the seeds' finished runs in --out again (same settings), train nothing")
    parser.add_argument("--merge", nargs="+", metavar="ROWS.json",
                        help="train nothing: join the rows of runs made one seed at a time into --json and the table")
    args = parser.parse_args(argv)
    if len(args.labels) != len(args.tasks):
        parser.error(f"--labels needs one count per task ({len(args.tasks)}), got {len(args.labels)}")
    rows_file = os.path.realpath(args.json or os.path.join(args.out, "study.json"))
    if args.merge and rows_file in map(os.path.realpath, args.merge):
        parser.error(f"the rows file {rows_file} is one of --merge's inputs; write it elsewhere (--json)")
    return args


def profile_of(args):
    from sonichu_jax.train.recipe import Profile

    return Profile(tuple(args.tasks), tuple(args.labels), args.unlabelled, args.test, args.pretrain_steps,
                   args.teacher_steps, args.student_steps, args.eval_every, tuple(args.overrides),
                   tuple(args.pretrain_set))


# ---------------------------------------------------------------------------------------
# One seed: every stage
# ---------------------------------------------------------------------------------------


def run_seed(args, profile, seed: int) -> dict:
    from sonichu_jax.train import recipe

    run = seed_paths(args, seed)
    if args.evaluate_only:
        return run
    root, pseudo_dir = run["root"], run["pseudo_dir"]
    data = recipe.write_data(run["data"]["train"].rsplit(os.sep, 1)[0], profile.tasks,
                             dict(zip(profile.tasks, profile.n_train)), profile.n_unlabelled, profile.n_test, seed)
    backbone = recipe.pretrain_backbone(root, profile, data)
    teachers = recipe.train_teachers(root, profile, data, backbone, pseudo_dir)
    if not args.no_scratch:
        recipe.train_teachers(root, profile, data, None, pseudo_dir, regimes=REGIMES, folder="scratch")
    five = [teachers[r] for r in REGIMES]
    recipe.distill_student(root, profile, data, backbone, five, pseudo_dir)
    recipe.distill_student(root, profile, data, backbone, five, pseudo_dir, teacher_weight=0.0,
                           folder="student_no_teacher")
    return run


def seed_paths(args, seed: int) -> dict:
    """Where a seed's data and runs go (the layout of `sonichu_jax.train.recipe`)."""
    root = os.path.join(args.out, f"seed{seed}")
    models = {f"teacher:{r}": os.path.join(root, "teachers", r, "model") for r in REGIMES}
    if not args.no_scratch:
        models.update({f"scratch:{r}": os.path.join(root, "scratch", r, "model") for r in REGIMES})
    models.update({"student": os.path.join(root, "student", "model"),
                   "student:no_teacher": os.path.join(root, "student_no_teacher", "model")})
    data = {split: os.path.join(root, "data", split) for split in ("train", "unlabelled", "test")}
    return {"root": root, "data": data, "pseudo_dir": os.path.join(root, "pseudo"), "models": models}


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def load(path):
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor

    model = SonichuModel.from_pretrained(path)
    return model, SonichuPreprocessor(size=model.cfg.image_size)


def soup(paths):
    """The teachers' weights averaged, every variable (the heads too)."""
    from sonichu_jax.model_arrays import flat_state
    from sonichu_jax.nn.sonichu import SonichuModel

    models = [load(p)[0] for p in paths]
    states = [flat_state(m) for m in models]
    mean = {k: np.mean([np.asarray(s[k], np.float32) for s in states], axis=0) for k in states[0]}
    model = SonichuModel.from_arrays(models[0].cfg, mean)
    model.eval()
    return model, load(paths[0])[1]


def row(seed, name, report, **extra):
    return {"seed": seed, "model": name, "weighted_mre": report.weighted_px, "unweighted_mre": report.unweighted_px,
            "per_task": {t: m.mre_px for t, m in report.tasks.items()}, "passes": PASSES.get(name, 2), **extra}


def evaluate_seed(args, profile, seed: int, run: dict) -> tuple[list[dict], dict]:
    from sonichu_jax.checkpoint import init_model
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.splits import fair_split
    from sonichu_jax.evaluation import predict_records, score
    from sonichu_jax.evaluation import ensemble
    from sonichu_jax.train import recipe

    cfg = recipe.regime_config("R0", profile, None, "").model
    test = [r for r in load_source(run["data"]["test"], tasks=cfg.tasks, log=None) if r.has_label]
    train_source = load_source(run["data"]["train"], tasks=cfg.tasks, log=None)
    train_idx, val_idx = fair_split(train_source)
    val = [train_source[i] for i in val_idx]
    # What an image-blind model converges to: each task's mean training label (all valid here).
    means = {t: np.mean([train_source[i].keypoints for i in train_idx if train_source[i].task == t], axis=0)
             for t in cfg.task_names}

    untrained = init_model(cfg, seed=seed)
    untrained.eval()
    loaded = {name: load(path) for name, path in run["models"].items()}
    loaded["untrained"] = (untrained, loaded["teacher:R1"][1])
    loaded["soup"] = soup([run["models"][f"teacher:{r}"] for r in REGIMES])
    preds = {name: predict_records(m, p, test, progress=False) for name, (m, p) in loaded.items()}

    names = [f"teacher:{r}" for r in REGIMES]
    val_mre = {n: score(val, predict_records(*loaded[n], val, progress=False)).weighted_px for n in names}
    ranked = sorted(names, key=val_mre.get)
    combos = {"ensemble:4": ranked[:4], "ensemble:5": names}
    for name, members in combos.items():
        preds[name] = [ensemble([preds[m][i][None] for m in members], "median")[0] for i in range(len(test))]
    preds["best_teacher"] = preds[ranked[0]]
    preds["mean_label"] = [means[r.task] for r in test]

    order = (["untrained", "mean_label"] + names + ["best_teacher", "ensemble:4", "ensemble:5", "student", "soup"]
             + [f"scratch:{r}" for r in REGIMES] + ["student:no_teacher"])
    rows = []
    for name in filter(preds.__contains__, order):
        extra = {"picked": ranked[0]} if name == "best_teacher" else {}
        if name.startswith("teacher:"):
            extra["val_weighted_mre"] = val_mre[name]
        rows.append(row(seed, name, score(test, preds[name]), **extra))
    analysis = analyse(args, profile, seed, run, test, preds, loaded, names)
    analysis["validation_mre"] = val_mre
    analysis["ensemble:4"] = ranked[:4]
    return rows, analysis


# ---------------------------------------------------------------------------------------
# Why an effect appears or not
# ---------------------------------------------------------------------------------------


def image_errors(records, preds) -> np.ndarray:
    return np.array([np.linalg.norm(p - r.keypoints, axis=-1)[r.valid].mean() for r, p in zip(records, preds)])


def analyse(args, profile, seed, run, test, preds, loaded, names) -> dict:
    """Error correlation, bias versus spread, pseudo-label quality, the teacher term."""
    errors = np.stack([image_errors(test, preds[n]) for n in names])
    corr = np.corrcoef(errors)
    off = corr[~np.eye(len(names), dtype=bool)]
    # Per keypoint: squared error of a teacher = squared bias of the teachers' mean + spread.
    bias2, spread2 = [], []
    for i, r in enumerate(test):
        stack = np.stack([preds[n][i] for n in names])[:, r.valid]
        mean = stack.mean(axis=0)
        bias2.append(np.sum((mean - r.keypoints[r.valid]) ** 2, -1).mean())
        spread2.append(np.sum((stack - mean) ** 2, -1).mean())
    bias2, spread2 = float(np.mean(bias2)), float(np.mean(spread2))
    return {
        "error_correlation_mean": float(off.mean()),
        "error_correlation": {n: dict(zip(names, map(float, c))) for n, c in zip(names, corr)},
        "rms_bias_px": bias2 ** 0.5, "rms_spread_px": spread2 ** 0.5,
        "spread_share": spread2 / (bias2 + spread2),
        "pseudo_labels": pseudo_quality(profile, run),
        "teacher_term": teacher_term(profile, seed, run, loaded, names),
    }


def truth_by_id(path, tasks):
    from sonichu_jax.data.sources import load_source

    return {r.source_id: r for r in load_source(path, tasks=tasks, log=None)}


def pseudo_quality(profile, run) -> dict:
    """Per round: mean distance of the written pseudo-labels to the truth; per regime: how
    many of them it keeps and their distance to the truth."""
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.train import recipe
    from sonichu_jax.train.pseudo_label import select_pseudo_records

    tasks = recipe.regime_config("R0", profile, None, "").model.tasks
    truth = truth_by_id(run["data"]["unlabelled"], tasks)

    def distance(records):
        d = [np.linalg.norm(r.keypoints - truth[r.source_id].keypoints, axis=-1).mean() for r in records]
        return float(np.mean(d)) if d else None

    out = {}
    for path in sorted(os.listdir(run["pseudo_dir"])):
        records = list(load_source(os.path.join(run["pseudo_dir"], path), tasks=tasks, log=None))
        errors = [np.linalg.norm(r.keypoints - truth[r.source_id].keypoints, axis=-1).mean() for r in records]
        # does the flip disagreement (the regimes' confidence) track the pseudo-label's error?
        corr = np.corrcoef([r.confidence for r in records], errors)[0, 1] if len(records) > 2 else float("nan")
        out[path] = {"written": len(records), "to_truth_px": distance(records),
                     "confidence_error_correlation": float(corr)}
    for regime in REGIMES:
        config = recipe.regime_config(regime, profile, None, run["pseudo_dir"])
        kept = []
        for pset in config.data.pseudo_labels:
            records = load_source(os.path.join(run["pseudo_dir"], pset.path), tasks=tasks, log=None)
            kept += select_pseudo_records(pset, records, tasks, config.seed)
        out[regime] = {"kept": len(kept), "unique": len({r.source_id for r in kept}), "to_truth_px": distance(kept),
                       "threshold_px": config.data.pseudo_labels[0].max_disagreement_px}
    return out


def teacher_term(profile, seed, run, loaded, names) -> dict:
    """On the student's training frames, without augmentation or TTA (as distillation
    runs the teachers): how far the teachers' median target, the real or pseudo label the
    real term uses, and each teacher are from the truth."""
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.splits import fair_split
    from sonichu_jax.data.synthetic import generate_sample
    from sonichu_jax.evaluation import predict_records
    from sonichu_jax.evaluation import ensemble
    from sonichu_jax.train import recipe

    tasks = recipe.regime_config("R0", profile, None, "").model.tasks
    source = load_source(run["data"]["train"], tasks=tasks, log=None)
    train_idx, _ = fair_split(source)
    labelled = [source[i] for i in train_idx]
    true_train = [generate_sample(r.task, int(r.source_id.rsplit("_", 1)[1]), 3 * seed, recipe.SYNTHETIC_SIZE,
                                  acquisition=_acquisition())[1] for r in labelled]
    r3 = recipe.regime_config("R3", profile, None, run["pseudo_dir"]).data.pseudo_labels[0]
    pseudo = [r for r in load_source(os.path.join(run["pseudo_dir"], r3.path), tasks=tasks, log=None)
              if r.confidence is not None and r.confidence <= r3.max_disagreement_px]
    truth = truth_by_id(run["data"]["unlabelled"], tasks)
    out = {}
    for kind, records, true in (("labelled", labelled, true_train),
                                ("pseudo", pseudo, [truth[r.source_id].keypoints for r in pseudo])):
        if not records:
            continue
        each = {n: predict_records(*loaded[n], records, tta=False, progress=False) for n in names}
        median = [ensemble([each[n][i][None] for n in names], "median")[0] for i in range(len(records))]

        def dist(preds):
            return float(np.mean([np.linalg.norm(p - t, axis=-1).mean() for p, t in zip(preds, true)]))

        out[kind] = {"n": len(records), "label_to_truth_px": dist([r.keypoints for r in records]),
                     "median_target_to_truth_px": dist(median),
                     "median_target_to_label_px": float(np.mean([np.linalg.norm(m - r.keypoints, axis=-1).mean()
                                                                 for m, r in zip(median, records)])),
                     "teacher_to_truth_px": {n: dist(each[n]) for n in names}}
    return out


def _acquisition():
    from sonichu_jax.data.synthetic import Acquisition
    from sonichu_jax.train import recipe

    return Acquisition(**recipe.ACQUISITION)


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per model: mean and standard deviation over seeds of both MREs, and passes."""
    out = {}
    for r in rows:
        out.setdefault(r["model"], {"w": [], "u": [], "passes": r["passes"]})
        out[r["model"]]["w"].append(r["weighted_mre"])
        out[r["model"]]["u"].append(r["unweighted_mre"])
    return {m: {"weighted": (np.mean(v["w"]), np.std(v["w"], ddof=1) if len(v["w"]) > 1 else 0.0),
                "unweighted": (np.mean(v["u"]), np.std(v["u"], ddof=1) if len(v["u"]) > 1 else 0.0),
                "passes": v["passes"], "seeds": len(v["w"])} for m, v in out.items()}


def format_table(rows: list[dict]) -> str:
    s = summary(rows)
    lines = ["| model | weighted MRE (px) | unweighted MRE (px) | inference cost |", "|---|---|---|---|"]
    for m, v in s.items():
        lines.append(f"| {m} | {v['weighted'][0]:.2f} ± {v['weighted'][1]:.2f} | "
                     f"{v['unweighted'][0]:.2f} ± {v['unweighted'][1]:.2f} | {v['passes']} passes |")
    return "\n".join(lines)


def paired(rows: list[dict], a: str, b: str) -> np.ndarray:
    """Per seed, b's weighted MRE minus a's (positive: a is better on that seed's data)."""
    by = {(r["model"], r["seed"]): r["weighted_mre"] for r in rows}
    return np.array([by[b, seed] - by[a, seed] for seed in sorted({r["seed"] for r in rows})
                     if (a, seed) in by and (b, seed) in by])


def gap(rows: list[dict], a: str, b: str) -> str:
    """How much better a is than b on the seed means, and whether that beats the seed
    spread (the larger of the two models' standard deviations). Every row of a seed shares
    that seed's data, whose difficulty moves all rows together, so the line also gives the
    paired gap: its mean and standard deviation over seeds and how many seeds agree."""
    s = summary(rows)
    d = s[b]["weighted"][0] - s[a]["weighted"][0]
    spread = max(s[a]["weighted"][1], s[b]["weighted"][1])
    verdict = ("yes" if d > spread else "no") if s[a]["seeds"] > 1 else "one seed: no spread"
    each = paired(rows, a, b)
    sd = f" ± {each.std(ddof=1):.2f}" if len(each) > 1 else ""
    return (f"{a} better than {b} by {d:+.2f} px (spread {spread:.2f}): {verdict}; "
            f"paired {each.mean():+.2f}{sd}, better in {int((each > 0).sum())} of {len(each)} seeds")


def goals(rows: list[dict]) -> list[str]:
    """The card's claims, each as a `gap` between two rows."""
    teachers = [f"teacher:{r}" for r in REGIMES]
    present = {r["model"] for r in rows}
    pairs = [(t, "mean_label") for t in teachers]  # image-specific at all?
    pairs += [("ensemble:5", "best_teacher"), ("student", "best_teacher"), ("ensemble:5", "student")]
    pairs += [(t, "soup") for t in teachers]
    pairs += [(t, f"scratch:{t.split(':')[1]}") for t in teachers]
    pairs.append(("student", "student:no_teacher"))
    return [gap(rows, a, b) for a, b in pairs if b in present]


def analysis_lines(seed, a: dict) -> list[str]:
    """One seed's analysis.json in a few lines (what explains the table)."""
    lines = [f"seed {seed}: teachers' per-image error correlation {a['error_correlation_mean']:.2f}; "
             f"RMS bias {a['rms_bias_px']:.1f} px vs RMS spread {a['rms_spread_px']:.1f} px "
             f"(spread {100 * a['spread_share']:.1f} % of the squared error)"]
    for name, p in a["pseudo_labels"].items():
        if "written" in p:
            lines.append(f"  {name}: {p['written']} written, {p['to_truth_px']:.2f} px from the truth, "
                         f"disagreement-error correlation {p['confidence_error_correlation']:.2f}")
        else:
            lines.append(f"  {name} keeps {p['kept']} (<= {p['threshold_px']:g} px): "
                         + (f"{p['to_truth_px']:.2f} px from the truth" if p["kept"] else "none"))
    for kind, t in a["teacher_term"].items():
        lines.append(f"  student's {kind} frames ({t['n']}): label {t['label_to_truth_px']:.2f} px from the truth, "
                     f"teachers' median {t['median_target_to_truth_px']:.2f} px")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from sonichu_jax.fileio import write_json
    from sonichu_jax.report import write_report

    started = time.perf_counter()
    profile = profile_of(args)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        rows = [r for path in args.merge for r in json.load(open(path))]
        seeds = sorted({r["seed"] for r in rows})
        found = {s: os.path.join(args.out, f"seed{s}", "analysis.json") for s in seeds}
        notes = [line for s, path in found.items() if os.path.exists(path)
                 for line in analysis_lines(s, json.load(open(path)))]
        return write_results(args, rows, None, seeds, notes)
    # Every teacher of a seed has one architecture: compile once, for all seeds (into the
    # cache a caller, such as the test session, already set up, if any).
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    rows, analysis, runs = [], {}, []
    for seed in args.seeds:
        t0 = time.perf_counter()
        run = run_seed(args, profile, seed)
        seed_rows, analysis[seed] = evaluate_seed(args, profile, seed, run)
        analysis[seed]["minutes"] = (time.perf_counter() - t0) / 60
        rows += seed_rows
        runs.append(run["root"])
        print(f"\n=== seed {seed}: {analysis[seed]['minutes']:.1f} min", flush=True)
    for seed in args.seeds:
        write_json(os.path.join(args.out, f"seed{seed}", "analysis.json"), analysis[seed])
    notes = [line for seed in args.seeds for line in analysis_lines(seed, analysis[seed])]
    write_results(args, rows, (time.perf_counter() - started) / 60, args.seeds, notes)
    for root in runs:  # one page per seed: each seed has its own data
        print(f"report: {write_report([root], os.path.join(root, 'report.html'), progress=False).path}", flush=True)
    return 0


def write_results(args, rows: list[dict], minutes: float | None, seeds, notes=()) -> int:
    """The rows (--json) and the table with the goals and the analysis (OUT/table.md)."""
    from sonichu_jax.fileio import write_json

    took = f" {minutes:.1f} min." if minutes is not None else ""
    text = (f"{format_table(rows)}\n\nMean ± standard deviation over seeds {list(seeds)}; MRE in pixels of the "
            f"128 px test frames ({args.test} per task, flip TTA).{took}\n\n" + "\n".join(goals(rows))
            + "\n\n" + "\n".join(notes)).rstrip()
    print("\n" + text)
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write(text + "\n")
    write_json(args.json or os.path.join(args.out, "study.json"), rows)
    print(f"rows: {args.json or os.path.join(args.out, 'study.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
