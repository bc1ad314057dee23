"""I-JEPA input pipeline and loop on synthetic frames: crops, masks and resumable iterator
state; a tiny run (loss decreases, no collapse), preemption + resume = one straight run,
and the exported backbone is what a teacher starts from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sonichu_jax.data.ijepa_masks import MaskConfig, MultiBlockMaskSampler
from sonichu_jax.data.ijepa_pipeline import RandomResizedCrop, crop_box, make_pretrain_pipeline
from sonichu_jax.data.sources import load_frames

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "ijepa_tiny.py")
TARGET_STD_FLOOR = 0.2  # normalised target features spread across tokens; ~0.5 at init here


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from sonichu_jax.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "syn", 3, size=64)
    return os.path.join(root, "images")


def test_crop_box_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_box(rng, 60, 80, (0.3, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.3 * 4800 * 0.9 <= h * w <= 4800
    # a frame far outside the aspect range: the centred fallback, cut to the nearest ratio
    assert crop_box(rng, 10, 400, (0.99, 1.0), (3 / 4, 4 / 3)) == (0, 193, 10, 13)


def test_pipeline_batches_and_resume(frames):
    sampler = MultiBlockMaskSampler(MaskConfig(min_keep=4, context_len=32), (8, 8), seed=0)
    crop = RandomResizedCrop((64, 64), flip=True)
    it = iter(make_pretrain_pipeline(load_frames(frames), crop, sampler, 4, seed=1))
    first = next(it)
    assert first["image"].shape == (4, 64, 64, 3) and first["image"].dtype == np.uint8
    assert first["context_idx"].shape == (4, 32) and first["target_idx"].shape == (4, 4, sampler.target_len)
    np.testing.assert_array_equal(first["target_idx"], sampler.sample(0, 4)["target_idx"])  # keyed by step
    state = it.get_state()
    expected = [next(it), next(it)]
    it.set_state(state)
    for want in expected:
        got = next(it)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# the tiny config, smaller still (compilation dominates here) and short
SETS = ["steps=40", "model.depth=1", "predictor.depth=1", "data.batch_size=8", "optim.warmup_steps=5",
        "log.every_steps=5", "checkpoint.every_steps=10", "log.progress=false"]


def _config():
    from sonichu_jax.train.configlib import apply_overrides, load_config_file

    return apply_overrides(load_config_file(CONFIG), SETS)


def _train_rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if '"train"' in line]


def pretrain_scenario(frames: str, tmp_path) -> None:
    """Runs in a fresh process (see the test below)."""
    from safetensors.numpy import load_file

    from sonichu_jax import cli
    from sonichu_jax.train.pretrain import pretrain

    # one straight run through the CLI
    straight = tmp_path / "straight"
    argv = ["pretrain", "--config", CONFIG, "--frames", frames, "--out", str(straight)]
    argv += [a for s in SETS for a in ("--set", s)]
    assert cli.main(argv) == 0
    rows = _train_rows(straight)
    assert rows[-1]["loss"] < 0.75 * rows[0]["loss"], [r["loss"] for r in rows]
    assert min(r["target_std"] for r in rows) > TARGET_STD_FLOOR
    assert {"loss", "lr", "wd", "momentum", "target_std", "img_per_s"} <= set(rows[-1])
    assert cli.main(argv) == 2  # checkpoints exist and no --resume: refused

    # preempted half-way, then resumed: the same weights
    resumed = tmp_path / "resumed"
    first = pretrain(_config(), frames, resumed, stop_after=20)
    assert first.interrupted and first.step == 20 and not (resumed / "backbone").exists()
    second = pretrain(_config(), frames, resumed, resume=True)
    assert not second.interrupted and second.step == 40
    a = load_file(str(straight / "backbone" / "flax_model.safetensors"))
    b = load_file(str(resumed / "backbone" / "flax_model.safetensors"))
    for key in a:
        if key.startswith("backbone/"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)

    # the teacher's backbone initialisation reads the export; PyTorch layout loads too
    from sonichu_jax.config import tiny_config
    from sonichu_jax.data.synthetic import synthetic_tasks
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.configlib import InitConfig, TeacherConfig
    from sonichu_jax.train.supervised import model_initializer

    teacher = TeacherConfig(model=tiny_config(depth=1, tasks=synthetic_tasks(("HC",))),
                            init=InitConfig(kind="backbone", path=str(straight / "backbone")))
    make_model, args = model_initializer(teacher)
    model = make_model(*args)
    kernel = np.asarray(model.backbone.blocks[0].attn.qkv.kernel[...])
    np.testing.assert_array_equal(kernel, a["backbone/blocks/0/attn/qkv/kernel"])
    torch_layout = SonichuModel.from_pretrained(straight / "backbone_pytorch")
    np.testing.assert_allclose(np.asarray(torch_layout.backbone.blocks[0].attn.qkv.kernel[...]), kernel, atol=1e-7)

    diverging_run_saves_nothing_non_finite(frames, tmp_path / "diverged")


def diverging_run_saves_nothing_non_finite(frames: str, out) -> None:
    """lr=1e30 overflows the parameters on the first step while loss and gradients are
    still finite: the guard stops the run, and a checkpoint it names as last good (if
    any) restores finite."""
    import pytest
    from train_util import assert_finite_checkpoint

    from sonichu_jax.errors import TrainingDiverged
    from sonichu_jax.train.configlib import apply_overrides
    from sonichu_jax.train.pretrain import pretrain

    config = apply_overrides(_config(), ["optim.lr=1e30", "checkpoint.every_steps=1", "steps=8"])
    with pytest.raises(TrainingDiverged) as info:
        pretrain(config, frames, out)
    message = str(info.value)
    saved = sorted(int(d) for d in os.listdir(out / "checkpoints") if d.isdigit())
    if not saved:
        assert "none was saved" in message, message
        return
    step = int(message.split("Last good checkpoint: step ")[1].split()[0])
    assert step == saved[-1], (saved, message)
    assert_finite_checkpoint(out / "checkpoints", step)


def test_tiny_pretrain_resume_and_export(frames, tmp_path):
    """Three short runs of the same program: in a subprocess with JAX's persistent
    compilation cache on, the second and third reuse the first one's executables (in this
    process the cache may already be fixed to off), which saves most of the test's time."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    code = (f"import sys, pathlib; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_ijepa_loop as t; "
            f"t.pretrain_scenario({frames!r}, pathlib.Path({str(tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
