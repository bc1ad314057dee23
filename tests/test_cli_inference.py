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
    (row,) = list(csv.DictReader(open(tmp_path / "r.csv")))
    kp = json.loads((tmp_path / "r.json").read_text())["results"][0]["keypoints"]
    assert row["task"] == "FA" and (row["width"], row["height"]) == ("120", "80")
    assert os.path.normpath(tmp_path / row["image"]) == str(images / "a.png")  # relative to the CSV
    np.testing.assert_allclose([json.loads(row[f"point_{i}_xy"]) for i in (1, 2, 3, 4)], kp, atol=1e-6)


def test_predict_overlays_of_same_named_images_stay_apart(checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    overlays = tmp_path / "overlays"
    assert main(["predict", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--task", "HC",
                 "--model", checkpoint, "--overlay", str(overlays), "--quiet"]) == 0
    assert sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png")) == ["a/x_HC.png", "b/x_HC.png"]
    assert not (cv2.imread(str(overlays / "a" / "x_HC.png")) == cv2.imread(str(overlays / "b" / "x_HC.png"))).all()


@pytest.mark.parametrize("argv, message", [
    (["predict", "IMAGES", "--task", "HC", "--out", "DIR"], "is an existing folder"),
    (["predict", "IMAGES", "--task", "HC", "--out", "FILE/r.csv"], "which is a file"),
    (["predict", "IMAGES", "--task", "HC", "--overlay", "FILE"], "is an existing file"),
    (["evaluate", "--data", "IMAGES", "--json", "DIR"], "is an existing folder"),
    (["evaluate", "--data", "IMAGES", "--json", "FILE/r.json"], "which is a file"),
    (["embed", "IMAGES", "--out", "DIR"], "is an existing folder"),
    (["embed", "IMAGES", "--out", "FILE/f.npz"], "which is a file"),
    (["report", "IMAGES", "--out", "DIR"], "is an existing folder"),
    (["report", "IMAGES", "--out", "FILE/r.html"], "which is a file"),
])
def test_unusable_output_path_fails_before_any_work(argv, message, images, tmp_path, capsys):
    """The output is checked first: the model named here does not even exist."""
    (tmp_path / "taken.json").mkdir()
    (tmp_path / "taken.npz").mkdir()
    (tmp_path / "taken.html").mkdir()
    (tmp_path / "plain").write_text("a file")
    paths = {"IMAGES": str(images), "FILE": str(tmp_path / "plain")}
    args = [a.replace("FILE", paths["FILE"]) if a.startswith("FILE") else paths.get(a, a) for a in argv]
    suffix = {"predict": ".json", "evaluate": ".json", "embed": ".npz", "report": ".html"}[argv[0]]
    args = [str(tmp_path / f"taken{suffix}") if a == "DIR" else a for a in args]
    if argv[0] != "report":
        args += ["--model", str(tmp_path / "no-such-model")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


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
