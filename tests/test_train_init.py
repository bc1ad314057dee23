"""Where training runs start, and what does not stop them.

- I-JEPA continued from the official training checkpoint (``torch.save`` of the dict the
  official trainer writes, built from the official-shaped PyTorch modules): at step 0 the
  train state holds the PyTorch tensors and its predictor computes what the official one
  does; a checkpoint of another patch grid runs with its tables recomputed; a checkpoint of
  another architecture is refused before anything is written.
- Unreadable frames are replaced by other draws, deterministically, counted and reported
  once each; too many stop the run.
- A teacher refuses a backbone-only checkpoint as a whole model (``init.kind=pretrained``).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_refs  # noqa: E402
from sonichu_jax.cli import main  # noqa: E402
from sonichu_jax.errors import ConfigError, InputError  # noqa: E402
from sonichu_jax.posembed import sincos_2d  # noqa: E402
from sonichu_jax.reference import ijepa as ijepa_ref  # noqa: E402

# the tiny I-JEPA config made smaller still (compilation dominates); its encoder is 64 wide,
# 1 block, 2 heads on 8x8 patches of 64 px, its predictor 32 wide and 1 block deep
TINY = ["model.depth=1", "predictor.depth=1", "data.batch_size=8", "optim.warmup_steps=1", "steps=4",
        "log.every_steps=2", "checkpoint.every_steps=4", "log.progress=false"]
BAD_FRAMES = 3


def official_checkpoint(path, image_size: int, seed: int):
    """The official trainer's ``jepa-latest.pth.tar`` for official-shaped networks of the
    tiny widths, trained at ``image_size`` px; returns (encoder, target encoder, predictor)."""
    tcfg = torch_refs.torch_cfg(image_size=[image_size, image_size], patch_size=8, width=64, depth=1, num_heads=2)
    encoder = torch_refs.randomize(ijepa_ref.Encoder(tcfg), seed=seed)
    target = torch_refs.randomize(ijepa_ref.Encoder(tcfg), seed=seed + 1)
    grid = (image_size // 8, image_size // 8)
    predictor = torch_refs.randomize(ijepa_ref.Predictor(grid, 64, 32, depth=1, num_heads=2), seed=seed + 2)
    torch.save(ijepa_ref.training_checkpoint(encoder, predictor, target, epoch=300), path)
    return encoder, target, predictor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(labelled synthetic data set, a frames folder of the same images with some truncated)."""
    from sonichu_jax.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("syn")
    dataset = write_synthetic_dataset(root / "syn", 12, tasks=("HC", "fetal_femur"), size=64)  # 24 frames
    frames = root / "frames"
    shutil.copytree(os.path.join(dataset, "images"), frames)
    paths = sorted(str(p) for p in frames.rglob("*.png"))
    for path in paths[: 3 * BAD_FRAMES : 3]:  # cut after the header: undecodable
        with open(path, "r+b") as fh:
            fh.truncate(100)
    return dataset, frames, paths[: 3 * BAD_FRAMES : 3]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("ijepa") / "jepa-latest.pth.tar"
    return (path, *official_checkpoint(path, 64, seed=5))


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    """The official checkpoint converted to this project's layout: its target encoder as
    the backbone, plus the predictor."""
    out = tmp_path_factory.mktemp("converted") / "jepa"
    assert main(["convert", str(official[0]), "--out", str(out), "--num-heads", "2"]) == 0  # shapes cannot tell
    return out


def pretrain_argv(frames, out, *sets: str) -> list[str]:
    return ["pretrain", "--config", "ijepa_tiny", "--frames", str(frames), "--out", str(out),
            *[arg for s in (*TINY, *sets) for arg in ("--set", s)]]


def refused(argv: list[str], out, capsys) -> str:
    """The command exits 2 with one line on stderr (returned) and writes nothing."""
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert not out.exists()
    return err[0]


def restore(run_dir, config, step: int):
    from sonichu_jax.train import ijepa
    from sonichu_jax.train import mesh as mesh_lib
    from sonichu_jax.train.checkpointing import Checkpointer

    plan = ijepa.build_pretrainer(config, mesh_lib.make_mesh())
    checkpointer = Checkpointer(run_dir / "checkpoints", config.checkpoint)
    try:
        state = checkpointer.restore(step, plan.state)
    finally:
        checkpointer.close()
    return {ijepa.state_key(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


# -- continuing from the official checkpoint ---------------------------------------------------------
def test_step_zero_is_the_official_checkpoint(official, data, tmp_path, capsys):
    from sonichu_jax.config import tiny_config
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.pretrain import pretrain

    path, encoder, target, predictor = official
    config = apply_overrides(load_config_file("ijepa_tiny"), [*TINY, f"init.path={path}"])
    result = pretrain(config, data[1], tmp_path / "run", stop_after=0)  # saves step 0 and stops
    assert result.step == 0 and not result.finished
    out = capsys.readouterr().out
    assert ("the context encoder from its encoder, the target encoder from its target_encoder, the checkpoint's "
            "predictor") in out
    assert "the optimiser state is fresh" in out

    state = restore(tmp_path / "run", config, 0)
    expected = {"params/encoder": encoder, "rest/encoder": encoder, "target": target,
                "params/predictor": predictor, "rest/predictor": predictor}
    seen = set()
    for prefix, module in expected.items():
        for name, value in torch_refs.ijepa_arrays(module).items():
            key = f"{prefix}/{name}"
            if key in state:  # the target holds parameters only; the tables live in rest
                np.testing.assert_array_equal(state[key], value, err_msg=key)
                seen.add(key)
    weights = {k for k in state if k.startswith(("params/", "target/", "rest/"))}
    assert seen == weights, sorted(weights - seen)
    assert int(state["step"]) == 0 and int(state["frames_skipped"]) == 0
    assert all(not v.any() for k, v in state.items() if k.startswith("opt_state/"))  # fresh AdamW

    # the train state's predictor computes what the official one does (as the converter's does)
    predictor_arrays = {k.split("/", 2)[2]: v for k, v in state.items() if k.startswith(("params/predictor/",
                                                                                          "rest/predictor/"))}
    cfg = tiny_config(depth=1)
    assert torch_refs.predictor_parity(cfg, 32, 1, predictor_arrays, predictor) <= 1e-5


def test_another_architecture_is_refused_before_anything_is_written(official, data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = pretrain_argv(data[1], out, f"init.path={official[0]}", "model.depth=2", "predictor.depth=2")
    assert (f"init.path {official[0]} does not match the configured model: model.depth: 1 (checkpoint) vs 2; "
            "predictor.depth: 1 (checkpoint) vs 2") in refused(argv, out, capsys)


def test_another_grid_runs_over_unreadable_frames(data, tmp_path, capsys):
    """A checkpoint trained at 56 px (7x7 patches) continued at 64 px (8x8), on a frames
    folder with truncated PNGs: the fixed tables are recomputed (said), the bad frames are
    replaced, counted in metrics.jsonl and named once each, and the run finishes."""
    from safetensors.numpy import load_file

    from sonichu_jax.train.supervised import check_whole_model

    path = tmp_path / "jepa-56px.pth.tar"
    official_checkpoint(path, 56, seed=9)
    out = tmp_path / "run"
    assert main(pretrain_argv(data[1], out, f"init.path={path}", "data.max_bad_fraction=0.5")) == 0
    captured = capsys.readouterr()
    # the three tables: encoder, target encoder, predictor
    assert captured.out.count("fixed sin-cos table recomputed for grid (8, 8) (was (7, 7))") == 3, captured.out
    named = [line for line in captured.err.splitlines() if "skipping a frame that cannot be read" in line]
    assert named and all(sum(bad in line for line in named) <= 1 for bad in data[2])
    assert all(any(bad in line for bad in data[2]) for line in named)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["frames_skipped"] for r in rows if r["kind"] == "train"]
    assert skipped == sorted(skipped) and skipped[-1] >= len(named) and np.isfinite(rows[-1]["loss"])
    exported = load_file(str(out / "backbone" / "flax_model.safetensors"))
    np.testing.assert_allclose(exported["backbone/pos_embed"][0], sincos_2d(64, (8, 8)), atol=1e-6)
    # the export is a backbone: a teacher may start from its encoder, not take it whole
    with pytest.raises(ConfigError, match="init.kind=backbone"):
        check_whole_model(str(out / "backbone"))


def test_a_converted_directory_and_the_parts(official, converted, tmp_path):
    """A converted directory's one encoder starts both; ``init.parts`` picks networks; a
    checkpoint without a predictor gets a fresh one with a note, or is refused."""
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.ijepa_start import load_start

    _, encoder, target, predictor = official
    base = apply_overrides(load_config_file("ijepa_tiny"), TINY)
    start = load_start(apply_overrides(base, [f"init.path={converted}"]))
    want = torch_refs.ijepa_arrays(target)
    for arrays in (start.encoder, start.target):
        np.testing.assert_array_equal(arrays["blocks/0/attn/qkv/kernel"], want["blocks/0/attn/qkv/kernel"])
    np.testing.assert_array_equal(start.predictor["embed/kernel"],
                                  torch_refs.ijepa_arrays(predictor)["embed/kernel"])
    assert any("holds one encoder" in line for line in start.lines)

    start = load_start(apply_overrides(base, [f"init.path={official[0]}", "init.parts=('target_encoder',)"]))
    assert start.predictor is None and start.encoder is start.target
    np.testing.assert_array_equal(start.encoder["norm/scale"], torch_refs.ijepa_arrays(target)["norm/scale"])
    assert "init: the predictor starts freshly initialised (init.parts leaves it out)" in start.lines

    bare = tmp_path / "bare"
    shutil.copytree(converted, bare)
    for name in os.listdir(bare):
        if name.startswith(("flax_predictor", "predictor_config")):
            os.remove(bare / name)
    start = load_start(apply_overrides(base, [f"init.path={bare}"]))
    assert start.predictor is None and any("no predictor" in line for line in start.lines)
    with pytest.raises(ConfigError, match="holds no predictor, and init.missing_predictor is error"):
        load_start(apply_overrides(base, [f"init.path={bare}", "init.missing_predictor=error"]))
    with pytest.raises(ConfigError, match="init.parts must name encoder and/or target_encoder"):
        apply_overrides(base, ["init.parts=('predictor',)"])


def test_resume_accepts_a_new_init_and_bad_frame_fraction():
    """init.* is read at step 0 only, and a run stopped by unreadable frames continues with
    a raised data.max_bad_fraction; the rest of data.* still has to match."""
    from sonichu_jax.train.configlib import apply_overrides, load_config_file, to_dict
    from sonichu_jax.train.run_dir import check_resume

    saved = apply_overrides(load_config_file("ijepa_tiny"), TINY)
    changed = apply_overrides(saved, ["init.path=/x/jepa-latest.pth.tar", "init.parts=('target_encoder',)",
                                      "init.missing_predictor=error", "data.max_bad_fraction=0.2"])
    assert check_resume(to_dict(saved), to_dict(changed), "run") is None
    with pytest.raises(ConfigError, match=r"data.crop_scale"):
        check_resume(to_dict(saved), to_dict(apply_overrides(changed, ["data.crop_scale=(0.5, 1.0)"])), "run")


# -- unreadable frames -----------------------------------------------------------------------------
def _pipeline(frames, max_bad_fraction: float, log):
    from sonichu_jax.data.ijepa_masks import MaskConfig, MultiBlockMaskSampler
    from sonichu_jax.data.ijepa_pipeline import RandomResizedCrop, make_pretrain_pipeline
    from sonichu_jax.data.sources import load_frames

    sampler = MultiBlockMaskSampler(MaskConfig(min_keep=4, context_len=32), (8, 8), seed=0)
    return iter(make_pretrain_pipeline(load_frames(str(frames)), RandomResizedCrop((64, 64)), sampler, 8, seed=3,
                                       max_bad_fraction=max_bad_fraction, log=log))


def test_unreadable_frames_are_replaced_deterministically(data):
    _, frames, bad = data
    said: list[str] = []
    it = _pipeline(frames, 0.5, said.append)
    batches = [next(it) for _ in range(6)]  # 48 slots of 24 frames: every bad one is met
    assert sum(int(b["skipped"].sum()) for b in batches) >= BAD_FRAMES
    assert sorted(line.split(": ")[1].split(" (")[0] for line in said) == sorted(bad)  # each once
    assert all(np.abs(b["image"]).reshape(8, -1).max(1).min() > 0 for b in batches)  # no blank slot
    assert "bad" not in batches[0]
    # the replacements are part of the order: the same again, and after a restore
    again = _pipeline(frames, 0.5, lambda text: None)
    for want in batches[:3]:
        np.testing.assert_array_equal(next(again)["image"], want["image"])
    state = again.get_state()
    for want in batches[3:]:
        np.testing.assert_array_equal(next(again)["image"], want["image"])
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["image"], batches[3]["image"])

    # more than the allowed fraction: one clear error
    strict = _pipeline(frames, 0.05, lambda text: None)  # 3 of 24 is 12.5 %
    with pytest.raises(InputError, match=r"frames cannot be read \(more than data.max_bad_fraction=0.05 allows\)"):
        for _ in range(6):
            next(strict)


# -- a teacher from a backbone-only checkpoint ----------------------------------------------------------
def test_teacher_refuses_a_backbone_as_a_whole_model(converted, data, torch_ref, tmp_path, capsys):
    from conftest import write_reference_checkpoint

    from sonichu_jax.config import tiny_config
    from sonichu_jax.train.supervised import check_whole_model

    write_reference_checkpoint(torch_ref, tiny_config(), tmp_path / "whole")
    check_whole_model(str(tmp_path / "whole"))  # a whole model passes
    out = tmp_path / "run"
    argv = ["train-teacher", "--config", "teacher_tiny", "--data", data[0], "--out", str(out),
            "--set", "init.kind=pretrained", "--set", f"init.path={converted}", "--set", "log.progress=false"]
    assert (f"init.kind=pretrained needs a whole model, but init.path {converted} holds trained weights only for "
            "its backbone, predictor (its 9 heads would start untrained); use init.kind=backbone") in \
        refused(argv, out, capsys)
