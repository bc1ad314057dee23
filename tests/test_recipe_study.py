"""benchmarks/recipe_study.py on a tiny setting (JSON schema, model names, the rows'
arithmetic) and the synthetic data's acquisition realism it relies on."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from sonichu_jax.data.synthetic import Acquisition, generate_sample, observed_labels

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import recipe_study  # noqa: E402

REGIMES = ("R1", "R2", "R3", "selective", "r3capped")
NAMES = (["untrained", "mean_label"] + [f"teacher:{r}" for r in REGIMES] + ["best_teacher", "ensemble:4", "ensemble:5", "student",
         "soup"] + [f"scratch:{r}" for r in REGIMES] + ["student:no_teacher"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The demo's tasks: the programs the quick demo compiled come from the session cache."""
    out = tmp_path_factory.mktemp("study")
    code = recipe_study.main([
        "--seeds", "0", "--tasks", "HC", "fetal_femur", "--labels", "14", "10", "--unlabelled", "10", "--test", "4",
        "--pretrain-steps", "3", "--teacher-steps", "4", "--student-steps", "4", "--eval-every", "4",
        "--out", str(out / "runs"), "--json", str(out / "study.json"),
    ])
    assert code == 0
    return out


def test_rows_schema_and_names(study):
    rows = json.loads((study / "study.json").read_text())
    assert [r["model"] for r in rows] == NAMES
    for r in rows:
        assert {"seed", "model", "weighted_mre", "unweighted_mre", "per_task"} <= set(r), r
        assert r["seed"] == 0 and set(r["per_task"]) == {"HC", "fetal_femur"}
        assert np.isfinite(r["weighted_mre"]) and np.isfinite(r["unweighted_mre"])
        # unweighted = the mean of the task MREs
        assert r["unweighted_mre"] == pytest.approx(np.mean(list(r["per_task"].values())), rel=1e-6)
    by = {r["model"]: r for r in rows}
    # the best teacher is the teacher with the lowest validation MRE, scored unchanged
    val = {n: by[n]["val_weighted_mre"] for n in NAMES if n.startswith("teacher:")}
    assert by["best_teacher"]["picked"] == min(val, key=val.get)
    assert by["best_teacher"]["weighted_mre"] == by[by["best_teacher"]["picked"]]["weighted_mre"]
    assert (by["ensemble:5"]["passes"], by["ensemble:4"]["passes"], by["student"]["passes"]) == (10, 8, 2)
    assert by["mean_label"]["passes"] == 0
    table = (study / "runs" / "table.md").read_text()
    assert all(f"| {n} |" in table for n in NAMES)
    analysis = json.loads((study / "runs" / "seed0" / "analysis.json").read_text())
    assert -1 <= analysis["error_correlation_mean"] <= 1 and 0 <= analysis["spread_share"] <= 1
    assert set(REGIMES) <= set(analysis["pseudo_labels"]) and "labelled" in analysis["teacher_term"]
    assert (study / "runs" / "seed0" / "report.html").exists()


def test_no_scratch_leaves_out_the_scratch_rows_and_goals(study, tmp_path):
    """--no-scratch (for long schedules): the same seed rescored without the five scratch
    teachers; every other row is scored as before."""
    runs = shutil.copytree(study / "runs", tmp_path / "runs", ignore=shutil.ignore_patterns("jax_cache"))
    code = recipe_study.main(["--seeds", "0", "--tasks", "HC", "fetal_femur", "--labels", "14", "10", "--unlabelled",
                              "10", "--test", "4", "--no-scratch", "--evaluate-only", "--out", str(runs),
                              "--json", str(tmp_path / "rows.json")])
    assert code == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["model"] for r in rows] == [n for n in NAMES if not n.startswith("scratch:")]
    full = {r["model"]: r["weighted_mre"] for r in json.loads((study / "study.json").read_text())}
    assert all(r["weighted_mre"] == pytest.approx(full[r["model"]], abs=1e-4) for r in rows)
    assert "scratch" not in (runs / "table.md").read_text()


def test_summary_is_mean_and_sample_std():
    rows = [{"model": "a", "weighted_mre": w, "unweighted_mre": u, "passes": 2} for w, u in ((1, 4), (2, 6), (4, 11))]
    s = recipe_study.summary(rows)["a"]
    assert s["weighted"] == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1)))
    assert s["unweighted"] == pytest.approx((7, np.std([4, 6, 11], ddof=1)))
    assert "| a | 2.33 ± 1.53 | 7.00 ± 3.61 | 2 passes |" in recipe_study.format_table(rows)


def test_gap_gives_the_paired_difference_per_seed():
    """Seed 1's data is harder for both models: the unpaired spread hides a gap that every
    seed shows; the paired figures find it."""
    mre = {("a", 0): 5.0, ("b", 0): 5.5, ("a", 1): 9.0, ("b", 1): 9.3, ("a", 2): 7.0, ("b", 2): 7.7}
    rows = [{"model": m, "seed": seed, "weighted_mre": v, "unweighted_mre": v, "passes": 2} for (m, seed), v in mre.items()]
    np.testing.assert_allclose(recipe_study.paired(rows, "a", "b"), [0.5, 0.3, 0.7])
    assert recipe_study.gap(rows, "a", "b") == ("a better than b by +0.50 px (spread 2.00): no; "
                                                "paired +0.50 ± 0.20, better in 3 of 3 seeds")
    assert recipe_study.gap(rows, "b", "a").endswith("paired -0.50 ± 0.20, better in 0 of 3 seeds")


# -- the data the study runs on ------------------------------------------------------------


def test_plain_generator_is_unchanged_by_a_default_acquisition():
    a_img, a_kps = generate_sample("HC", 3, seed=2, size=64)
    b_img, b_kps = generate_sample("HC", 3, seed=2, size=64, acquisition=Acquisition())
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_kps, b_kps)


def test_frames_of_one_device_share_its_sector():
    """One device: the sector (opening, apex, depth) varies only by the per-frame jitter
    around its preset, far less than across independently drawn frames."""
    def sector_areas(acquisition):
        return np.array([(generate_sample("FA", i, seed=5, size=64, acquisition=acquisition)[0] > 0).mean()
                         for i in range(16)])

    one, plain = sector_areas(Acquisition(devices=1)), sector_areas(None)
    assert one.std() < 0.7 * plain.std(), (one.std(), plain.std())


def test_label_noise_has_the_stated_scatter():
    kps = np.full((4000, 2), 60.0)
    acq = Acquisition(label_noise_px=4.0)
    noisy = observed_labels(kps, "HC", 0, 0, 128, acq)
    np.testing.assert_allclose((noisy - kps).std(axis=0), 2.0, rtol=0.05)  # 4 px at 256 -> 2 px at 128
    slipped = observed_labels(kps, "HC", 0, 0, 128, Acquisition(label_noise_px=4.0, slip_rate=0.1))
    far = np.linalg.norm(slipped - kps, axis=1) > 8
    assert 0.07 < far.mean() < 0.13  # slips are six sigma away: almost all of them, almost nothing else


def test_shadow_darkens_a_wedge():
    plain = [generate_sample("HC", i, seed=1, size=96)[0].astype(float) for i in range(12)]
    shadowed = [generate_sample("HC", i, seed=1, size=96, acquisition=Acquisition(shadow_rate=1.0))[0].astype(float)
                for i in range(12)]
    # the same frame with a shadow drawn in: a wedge loses its echo, a short reflector lights up
    darker = [(s < p - 20).mean() for p, s in zip(plain, shadowed)]
    brighter = [(s > p + 20).mean() for p, s in zip(plain, shadowed)]
    assert min(darker) > 0.02 and max(brighter) < 0.02, (darker, brighter)
