"""Results in users' formats: predict's FM_UIA CSV scored by evaluate (the same MRE as
evaluating the model), JSON with normalised coordinates, evaluate's per-image errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sonichu_jax.cli import main
from sonichu_jax.data.sources import load_csv, load_source

TASKS = ("HC", "fetal_femur")


@pytest.fixture(scope="module")
def scored(quick_demo, tmp_path_factory):
    """The demo's student evaluated on its held-out set directly and through prediction
    CSVs (one per task), in one evaluate run."""
    tmp = tmp_path_factory.mktemp("formats")
    model, data = str(quick_demo.out / "student" / "model"), quick_demo.out / "data" / "test"
    csvs = []
    for task in TASKS:
        csvs.append(tmp / "predictions" / f"{task}_pred.csv")
        assert main(["predict", str(data / "images" / task), "--task", task, "--model", model,
                     "--out", str(csvs[-1]), "--quiet"]) == 0
    out = tmp / "eval.json"
    args = ["evaluate", "--model", model, "--data", str(data), "--json", str(out), "--quiet"]
    for path in csvs:
        args += ["--predictions", str(path)]
    assert main(args) == 0
    return json.loads(out.read_text()), csvs, data


def test_prediction_csv_is_fmuia_and_scores_like_the_model(scored):
    results, csvs, data = scored
    with open(csvs[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "task", "width", "height", "point_1_xy", "point_2_xy", "point_3_xy",
                             "point_4_xy"]
    assert rows[0]["image"].startswith("../") and len(json.loads(rows[0]["point_1_xy"])) == 2
    # the FM_UIA reader takes it as a labelled source; its image paths resolve
    source = load_csv(str(csvs[0]), task="HC", tasks=_tasks(results))
    assert len(source) == 16 and not source.report.issues
    model = results["results"]["model"]
    for task, name in zip(TASKS, ("HC_pred", "fetal_femur_pred")):
        column = results["results"][name]
        assert column["n"] == 16 and set(column["tasks"]) == {task}
        assert column["tasks"][task]["mre_px"] == pytest.approx(model["tasks"][task]["mre_px"], abs=1e-6)


def test_evaluate_json_has_per_image_errors(scored):
    results, _, data = scored
    labels = {r.source_id: r for r in load_source(str(data), log=None, tasks=_tasks(results))}
    per_image = results["per_image"]["model"]
    assert len(per_image) == 32
    for task in TASKS:
        mres = [e["mre_px"] for e in per_image if e["task"] == task]
        assert np.mean(mres) == pytest.approx(results["results"]["model"]["tasks"][task]["mre_px"], abs=1e-6)
    entry = per_image[-1]
    label = labels[entry["id"]]
    expected = np.linalg.norm(np.array(entry["prediction_px"]) - label.keypoints, axis=1)
    np.testing.assert_allclose(entry["error_px"], expected, atol=1e-3)
    assert entry["mre_px"] == pytest.approx(expected.mean(), abs=1e-3) and "error_mm" not in entry


def _tasks(results):
    from sonichu_jax.config import ModelConfig

    return ModelConfig.load(results["models"]["model"]).tasks


def test_evaluate_scores_only_the_images_a_prediction_file_covers(scored, tmp_path, capsys):
    _, csvs, data = scored
    with open(csvs[0], newline="") as fh:
        lines = fh.read().splitlines()
    partial = csvs[0].parent / "partial.csv"  # beside it: the relative image paths still resolve
    partial.write_text("\n".join(lines[:4]) + "\n")
    out = tmp_path / "partial.json"
    assert main(["evaluate", "--predictions", str(partial), "--data", str(data), "--json", str(out), "--quiet"]) == 0
    column = json.loads(out.read_text())["results"]["partial"]
    assert column["n"] == 3
    assert "no prediction for 13 labelled images" in capsys.readouterr().err


def test_predict_json_has_normalised_coordinates(quick_demo, tmp_path):
    model = str(quick_demo.out / "student" / "model")
    image = quick_demo.out / "data" / "test" / "images" / "HC" / "HC_000003.png"
    out = tmp_path / "p.json"
    assert main(["predict", str(image), "--task", "HC", "--model", model, "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())["results"][0]
    size = np.array([result["width"], result["height"]])
    np.testing.assert_allclose(np.array(result["keypoints_normalised"]) * size, result["keypoints"], atol=1e-4)
    assert np.all((np.array(result["keypoints_normalised"]) >= 0) & (np.array(result["keypoints_normalised"]) <= 1))
