"""Packs (`sonichu-jax pack`, sonichu_jax.data.shards): a synthetic set round-trips
(labels and pixels equal to the PNG folder's), unreadable frames are skipped by name and
counted, damaged shards are one line naming them, --force replaces only packs, and a
teacher trains from a pack with the same per-step losses as from the PNG folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sonichu_jax.cli import main
from sonichu_jax.data.sources import load_frames, load_source
from sonichu_jax.data.synthetic import write_synthetic_dataset
from sonichu_jax.preprocess import load_image, read_image


@pytest.fixture(scope="module")
def femur(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "femur", 40, tasks=("fetal_femur", "HC"), size=48)


@pytest.mark.parametrize("store", ["decoded", "encoded"])
def test_pack_round_trips_a_synthetic_set(femur, tmp_path, store, capsys):
    out = tmp_path / "pack"
    assert main(["pack", femur, "--out", str(out), "--store", store, "--shard-size", "7", "--quiet"]) == 0
    assert "packed 80 frames" in capsys.readouterr().err
    assert len([f for f in os.listdir(out) if f.endswith(".array_record")]) == 12  # ceil(80 / 7)
    png, packed = load_source(femur, log=None), load_source(str(out), log=None)
    assert len(packed) == len(png) == 80
    for a, b in zip(png, packed):
        assert (a.task, a.source_id, a.is_pseudo, a.spacing_mm) == (b.task, b.source_id, b.is_pseudo, b.spacing_mm)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.valid, b.valid)
        pixels = load_image(b.image)
        assert pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, read_image(a.image))
    # a frame folder reads as a pack too (I-JEPA), pixels unchanged
    frames = load_frames(str(out))
    np.testing.assert_array_equal(load_image(frames[79].image), read_image(png[79].image))


def test_unreadable_frames_are_named_skipped_and_counted(tmp_path, capsys):
    src = write_synthetic_dataset(tmp_path / "syn", 6, tasks=("HC",), size=32)
    images = sorted(os.listdir(os.path.join(src, "images", "HC")))
    for name in images[1:3]:
        with open(os.path.join(src, "images", "HC", name), "wb") as fh:
            fh.write(b"not a png")
    assert main(["pack", src, "--out", str(tmp_path / "pack"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert all(f"cannot be read: {os.path.join(src, 'images', 'HC', n)}" in err for n in images[1:3])
    assert "packed 4 frames" in err and "skipped 2 unreadable" in err
    assert [r.source_id for r in load_source(str(tmp_path / "pack"), log=None)] == \
        [r.source_id for i, r in enumerate(load_source(src, log=None)) if i not in (1, 2)]


def test_damaged_shards_and_force(femur, tmp_path, capsys):
    out = tmp_path / "pack"
    assert main(["pack", femur, "--out", str(out), "--shard-size", "50", "--quiet"]) == 0
    shard = out / "shard-00001.array_record"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["train-teacher", "--config", "configs/teacher_tiny.py", "--data", str(out),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pack shard {shard} is truncated or damaged (0 of 30 records)" in err[0]
    # an existing pack is replaced only with --force; a folder that is not a pack never
    assert main(["pack", femur, "--out", str(out), "--quiet"]) == 2
    assert main(["pack", femur, "--out", str(out), "--quiet", "--force", "--store", "encoded"]) == 0
    assert json.load(open(out / "pack.json"))["store"] == "encoded" and len(load_source(str(out), log=None)) == 80
    assert sorted(os.listdir(tmp_path)) == ["pack"]  # no temporary folder left
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["pack", femur, "--out", str(other), "--quiet", "--force"]) == 2
    assert "not a pack" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"


def test_teacher_trains_from_a_pack_with_the_png_folders_losses(femur, tmp_path):
    """Same seed, same records in the same order, bit-identical pixels: the per-step losses
    agree to float32 rounding (rtol 1e-6; measured: identical)."""
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.supervised import train_teacher

    pack = tmp_path / "pack"
    assert main(["pack", femur, "--out", str(pack), "--quiet"]) == 0
    sets = ["model.deconv_filters=16", "model.depth=1", "model.width=32", "data.batch_size=8", "steps=6",
            "optim.warmup_steps=2", "log.every_steps=1", "log.eval_every_steps=0", "log.progress=false",
            "checkpoint.every_steps=100"]
    config = apply_overrides(load_config_file("configs/teacher_tiny.py"), sets)
    losses = []
    for data in (femur, str(pack)):
        out = tmp_path / f"run-{len(losses)}"
        train_teacher(config, data, out)
        losses.append([json.loads(line)["loss"] for line in open(out / "metrics.jsonl") if '"train"' in line])
    print("losses (PNG folder, pack):", losses)
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_a_frame_folder_packs_as_unlabelled_frames(femur, tmp_path):
    frames = os.path.join(femur, "images")
    assert main(["pack", frames, "--out", str(tmp_path / "pack"), "--frames", "--store", "encoded", "--quiet"]) == 0
    packed, files = load_frames(str(tmp_path / "pack")), load_frames(frames)
    assert [r.source_id for r in packed] == [r.source_id for r in files] and len(packed) == 80
    assert all(r.task is None and r.keypoints is None for r in packed)
    np.testing.assert_array_equal(load_image(packed[5].image), read_image(files[5].image))


def test_a_pack_never_overlaps_its_source(femur, tmp_path, capsys):
    for out in (femur, os.path.join(femur, "pack"), os.path.dirname(femur)):
        assert main(["pack", femur, "--out", out, "--quiet", "--force"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pack folder {out} overlaps {femur}" in err[0], err
    assert not os.path.exists(os.path.join(femur, "pack"))


def test_evaluate_reads_a_pack_as_it_reads_the_png_folder(femur, tmp_path):
    from conftest import numpy_model

    from sonichu_jax.config import tiny_config
    from sonichu_jax.data.synthetic import synthetic_tasks
    from sonichu_jax.evaluation import evaluate

    model_dir = tmp_path / "model"
    numpy_model(tiny_config(tasks=synthetic_tasks(("fetal_femur", "HC")))).save_pretrained(str(model_dir))
    pack = tmp_path / "pack"
    assert main(["pack", femur, "--out", str(pack), "--quiet"]) == 0
    runs = [evaluate(data, [str(model_dir)], progress=False, warn=lambda _: None) for data in (femur, str(pack))]
    (png,), (packed,) = (list(r.columns.values()) for r in runs)
    assert packed.n == png.n == 80
    np.testing.assert_allclose(packed.weighted_px, png.weighted_px, rtol=1e-6)
    for task in png.tasks:
        np.testing.assert_allclose(packed.tasks[task].mre_px, png.tasks[task].mre_px, rtol=1e-6)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(pack), "--json", str(out), "--quiet"]) == 0
    (images,) = json.loads(out.read_text())["per_image"].values()
    by_id = {entry["id"]: entry for entry in images}
    assert len(by_id) == 80 and all(entry["image"] == entry["id"] for entry in images)
    assert sorted(by_id) == sorted(r.source_id for r in runs[0].scored["model"][0])


def test_report_tiles_draw_a_packed_frame_as_its_png(femur, tmp_path):
    from sonichu_jax.overlay import draw_comparison

    pack = tmp_path / "pack"
    assert main(["pack", femur, "--out", str(pack), "--quiet"]) == 0
    png = {r.source_id: r for r in load_source(femur)}
    packed = list(load_source(str(pack)))
    for record in packed[:3]:
        twin = png[record.source_id]
        pred = twin.keypoints + 3.0
        tiles = [draw_comparison(r.image, pred, r.keypoints, r.valid, r.task, size=96) for r in (record, twin)]
        assert tiles[0].shape == (96, 96, 3)
        np.testing.assert_array_equal(tiles[0], tiles[1])


def test_prediction_files_against_a_pack_are_refused_in_one_line(femur, tmp_path, capsys):
    pack, preds = tmp_path / "pack", tmp_path / "p.csv"
    assert main(["pack", femur, "--out", str(pack), "--quiet"]) == 0
    preds.write_text("image,task,width,height,point_1_xy,point_2_xy\nimages/a.png,fetal_femur,64,64,\"[1, 2]\",\"[3, 4]\"\n")
    assert main(["evaluate", "--predictions", str(preds), "--data", str(pack), "--quiet"]) == 2
    assert "matched to the images by path" in capsys.readouterr().err
