"""`sonichu-jax predict` and `sonichu-jax parity` end to end, including their failure modes."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest

from conftest import REFERENCE_PATH, write_reference_checkpoint
from sonichu_jax.cli import COMMANDS, main
from sonichu_jax.config import tiny_config

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(torch_ref, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    write_reference_checkpoint(torch_ref, tiny_config(), directory, seed=2)
    return str(directory)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 255, (80, 120), dtype=np.uint8))
    cv2.imwrite(str(folder / "sub" / "b.png"), rng.integers(0, 255, (50, 40, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_predict_writes_json_and_overlays(checkpoint, images, tmp_path, capsys):
    out, overlays = tmp_path / "res.json", tmp_path / "overlays"
    code = main(["predict", str(images), "--task", "HC", "--model", checkpoint, "--batch-size", "4",
                 "--overlay", str(overlays), "--out", str(out), "--quiet"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["task"] == "HC" and data["tta"] is True and not data["failed"]
    sizes = {os.path.basename(r["image"]): (r["width"], r["height"]) for r in data["results"]}
    assert sizes == {"a.png": (120, 80), "b.png": (40, 50)}
    for r in data["results"]:
        kp = np.array(r["keypoints"])
        assert kp.shape == (4, 2)
        assert np.all(kp >= 0) and np.all(kp <= [r["width"], r["height"]])
    drawn = cv2.imread(str(overlays / "a_HC.png"))
    assert drawn.shape == (80, 120, 3)
    assert (drawn != drawn[..., :1]).any(), "overlay has no coloured marks"


def test_predict_csv_matches_json(checkpoint, images, tmp_path):
    main(["predict", str(images / "a.png"), "--task", "FA", "--model", checkpoint, "--out",
          str(tmp_path / "r.json"), "--quiet"])
    main(["predict", str(images / "a.png"), "--task", "FA", "--model", checkpoint, "--out",
          str(tmp_path / "r.csv"), "--quiet"])
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    kp = json.loads((tmp_path / "r.json").read_text())["results"][0]["keypoints"]
    assert [int(r["keypoint"]) for r in rows] == [0, 1, 2, 3]
    np.testing.assert_allclose([[float(r["x"]), float(r["y"])] for r in rows], kp, atol=1e-3)


def test_predict_unknown_task_exits_2(checkpoint, images, capsys):
    assert main(["predict", str(images), "--task", "femur", "--model", checkpoint, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'femur'" in err and "fetal_femur" in err


def test_predict_reports_bad_files_and_keeps_going(checkpoint, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "res.json"
    code = main(["predict", str(images), str(tmp_path / "missing.png"), "--task", "HC", "--model", checkpoint,
                 "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.png" in err and "2 predicted, 2 failed" in err
    assert len(json.loads(out.read_text())["results"]) == 2


def test_predict_bad_output_name_writes_nothing(checkpoint, images, tmp_path):
    assert main(["predict", str(images), "--task", "HC", "--model", checkpoint, "--out",
                 str(tmp_path / "res.txt"), "--quiet"]) == 2
    assert not (tmp_path / "res.txt").exists()


def test_predict_wrong_checkpoint_lists_names(checkpoint, tmp_path, images, capsys):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(os.path.join(checkpoint, "model.safetensors"))
    del tensors["backbone.blocks.1.mlp.fc2.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(checkpoint, "config.json")).read())
    assert main(["predict", str(images), "--task", "HC", "--model", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "backbone/blocks/1/mlp/fc2/kernel" in err and "Traceback" not in err


def test_parity_passes_on_reference_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main(["parity", checkpoint, "--tasks", "HC", "PLAX", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and [t["task"] for t in report["tasks"]] == ["HC", "PLAX"]
    assert all(t["heatmap_rel_l2"] <= 1e-5 for t in report["tasks"])
    assert "pass" in capsys.readouterr().out


def test_parity_fails_when_pytorch_side_differs(checkpoint, tmp_path, capsys):
    """A user's modeling file whose keypoints are off by 1e-3 must fail the check."""
    module = tmp_path / "modeling_sonichu.py"
    module.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('ref', {REFERENCE_PATH!r})\n"
        "ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)\n"
        "class SonichuModel(ref.SonichuModel):\n"
        "    def predict(self, x, task, tta=True):\n"
        "        return super().predict(x, task, tta) + 1e-3\n"
    )
    assert main(["parity", checkpoint, "--tasks", "FA", "--torch-module", str(module)]) == 1
    assert "FAIL" in capsys.readouterr().out
