"""MRE against hand computations; weighted vs unweighted; ensembles; the table."""

import json
import math

import numpy as np
import pytest

from sonichu_jax.evaluation import compute_mre, ensemble, format_table, image_mre, keypoint_errors, table_dict, table_rows


def test_image_mre_by_hand():
    pred = np.array([[[0, 0], [3, 4], [10, 10]]], np.float32)
    target = np.array([[[0, 0], [0, 0], [0, 0]]], np.float32)
    np.testing.assert_allclose(image_mre(pred, target, [[True, True, False]]), [2.5])  # (0 + 5) / 2
    np.testing.assert_allclose(image_mre(pred, target, [[True, True, True]]), [(0 + 5 + math.sqrt(200)) / 3])
    assert np.isnan(image_mre(pred, target, [[False, False, False]]))[0]
    assert np.isnan(keypoint_errors(pred, target, [[True, False, True]])[0, 1])


def _case():
    """Task A: two images with errors 1 and 3; task B: one image with error 10 (mm known)."""
    tasks = ["A", "A", "B"]
    targets = [np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((1, 2))]
    valid = [np.array([True, True]), np.array([True, False]), np.array([True])]
    preds = [
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # errors 1, 1 -> 1
        np.array([[3.0, 0.0], [99.0, 99.0]]),  # 3 (second masked)
        np.array([[6.0, 8.0]]),  # 10
    ]
    spacing = [None, 0.5, 0.2]
    return tasks, targets, valid, preds, spacing


def test_weighted_and_unweighted_differ():
    report = compute_mre(*_case())
    a, b = report.tasks["A"], report.tasks["B"]
    assert (a.n, b.n) == (2, 1)
    assert a.mre_px == pytest.approx(2.0) and b.mre_px == pytest.approx(10.0)
    assert report.weighted_px == pytest.approx((1 + 3 + 10) / 3)
    assert report.unweighted_px == pytest.approx((2 + 10) / 2)
    assert a.per_keypoint_px == pytest.approx([2.0, 1.0])
    # mm: only images with spacing (A's second: 3 * 0.5, B: 10 * 0.2)
    assert a.n_mm == 1 and a.mre_mm == pytest.approx(1.5) and b.mre_mm == pytest.approx(2.0)
    assert report.weighted_mm == pytest.approx(1.75) and report.unweighted_mm == pytest.approx(1.75)


def test_no_spacing_gives_no_mm():
    tasks, targets, valid, preds, _ = _case()
    report = compute_mre(tasks, targets, valid, preds)
    assert report.weighted_mm is None and report.tasks["A"].mre_mm is None


def test_ensemble_is_coordinate_wise():
    rng = np.random.default_rng(0)
    preds = [rng.normal(size=(4, 3, 2)) for _ in range(5)]
    np.testing.assert_allclose(ensemble(preds), np.median(np.stack(preds), axis=0))
    np.testing.assert_allclose(ensemble(preds[:4], "mean"), np.mean(np.stack(preds[:4]), axis=0))
    # the coordinate-wise median is not the prediction of any one model in general
    assert not any(np.allclose(ensemble(preds), p) for p in preds)
    with pytest.raises(ValueError, match="median"):
        ensemble(preds, "max")


def test_table_and_json():
    tasks, targets, valid, preds, spacing = _case()
    good = compute_mre(tasks, targets, valid, preds, spacing)
    perfect = compute_mre(tasks, targets, valid, targets, spacing)
    text = format_table({"m1": good, "m2": perfect})
    lines = text.splitlines()
    assert lines[0].split() == ["task", "n", "m1", "(px)", "m2", "(px)"]
    row = {line.split()[0]: line.split()[1:] for line in lines if line and not line.startswith("-")}
    assert row["A"] == ["2", "2.00", "0.00"] and row["B"] == ["1", "10.00", "0.00"]
    assert row["weighted"] == ["3", "4.67", "0.00"] and row["unweighted"] == ["2", "6.00", "0.00"]
    assert "1.75" in format_table({"m1": good}, unit="mm")
    data = table_dict({"m1": good})
    json.dumps(data, allow_nan=False)  # strict JSON
    assert data["m1"]["tasks"]["A"]["n"] == 2 and data["m1"]["weighted_mre_px"] == pytest.approx(14 / 3)


def test_table_rows_hold_every_column_task_in_order():
    """The text table and the report's HTML table are both drawn from these rows: a task
    only one column has is a row of its own, with no value (None) for the other column."""
    one = np.ones((1, 2, 2))
    hc = compute_mre(["HC"], [np.zeros((2, 2))], [np.ones(2, bool)], list(one * [3.0, 4.0]))  # 5 px per point
    fa = compute_mre(["FA"], [np.zeros((2, 2))], [np.array([True, False])], list(one))
    rows = table_rows({"hc": hc, "fa": fa})
    assert [(r.label, r.n) for r in rows] == [("HC", 1), ("FA", 1), ("weighted", 2), ("unweighted", 2)]
    assert rows[0].values == [5.0, None] and rows[1].values[0] is None
    np.testing.assert_allclose(rows[1].values[1], math.sqrt(2))
    assert rows[2].values == [5.0, rows[1].values[1]]
    assert format_table({"hc": hc, "fa": fa}).splitlines()[3].split() == ["FA", "1", "-", "1.41"]
    assert table_rows({"hc": hc, "fa": fa}, tasks=["FA", "HC"])[0].label == "FA"


def test_image_mre_of_one_record_is_a_scalar():
    pred, target = np.array([[0.0, 0.0], [3.0, 4.0]]), np.zeros((2, 2))
    assert image_mre(pred, target, [True, True]) == 2.5 and np.isnan(image_mre(pred, target, [False, False]))


def test_task_table_joins_models_and_refuses_two_keypoint_counts():
    from sonichu_jax.config import TaskSpec, tiny_config
    from sonichu_jax.errors import InputError
    from sonichu_jax.evaluation import task_table

    a = tiny_config(tasks=(TaskSpec("HC", 4), TaskSpec("FA", 4)))
    b = tiny_config(tasks=(TaskSpec("AOP", 4), TaskSpec("HC", 4)))
    assert [t.name for t in task_table([a, b], ["a", "b"])] == ["HC", "FA", "AOP"]
    with pytest.raises(InputError, match="c: task HC has 2 keypoints, a has 4"):
        task_table([a, tiny_config(tasks=(TaskSpec("HC", 2),))], ["a", "c"])
