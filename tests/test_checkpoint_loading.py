"""Loading PyTorch-layout checkpoints: the variations real files have, and every error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import numpy_model, random_images, write_reference_checkpoint
from sonichu_jax.checkpoint import FLAX_WEIGHTS_NAME, flat_state
from sonichu_jax.config import tiny_config
from sonichu_jax.convert import ConversionError
from sonichu_jax.errors import InputError
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.nn.vit import sincos_2d_table

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference_dir(torch_ref, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ref")
    write_reference_checkpoint(torch_ref, tiny_config(), directory, seed=11)
    return directory


@pytest.fixture(scope="module")
def reference_prediction(reference_dir):
    model = SonichuModel.from_pretrained(reference_dir)
    return np.asarray(model.predict(random_images(2, model.cfg), "FA", tta=False))


def _rewrite(src_dir, dst_dir, edit, config_edit=None):
    """Copy a checkpoint, editing its tensors (and optionally its config)."""
    tensors = load_file(os.path.join(src_dir, "model.safetensors"))
    tensors = edit(dict(tensors))
    os.makedirs(dst_dir, exist_ok=True)
    save_file(tensors, os.path.join(dst_dir, "model.safetensors"))
    with open(os.path.join(src_dir, "config.json")) as fh:
        config = json.load(fh)
    if config_edit:
        config = config_edit(config)
    with open(os.path.join(dst_dir, "config.json"), "w") as fh:
        json.dump(config, fh)
    return dst_dir


def _predict(directory):
    model = SonichuModel.from_pretrained(directory)
    return np.asarray(model.predict(random_images(2, model.cfg), "FA", tta=False))


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_wrapper_prefixes_are_stripped(prefix, reference_dir, reference_prediction, tmp_path):
    out = _rewrite(reference_dir, tmp_path, lambda t: {prefix + k: v for k, v in t.items()})
    report = []
    model = SonichuModel.from_pretrained(out, report=report)
    assert report[0].prefix == prefix
    np.testing.assert_array_equal(np.asarray(model.predict(random_images(2, model.cfg), "FA", tta=False)),
                                  reference_prediction)


def test_last_norm_alias(reference_dir, reference_prediction, tmp_path):
    def rename(t):
        return {k.replace("backbone.norm.", "backbone.last_norm."): v for k, v in t.items()}

    np.testing.assert_array_equal(_predict(_rewrite(reference_dir, tmp_path, rename)), reference_prediction)


def test_missing_position_table_uses_fixed_sincos(reference_dir, reference_prediction, tmp_path):
    out = _rewrite(reference_dir, tmp_path, lambda t: {k: v for k, v in t.items() if k != "backbone.pos_embed"})
    report = []
    model = SonichuModel.from_pretrained(out, report=report)
    assert [d[0] for d in report[0].defaulted] == ["backbone/pos_embed"]
    np.testing.assert_allclose(np.asarray(model.predict(random_images(2, model.cfg), "FA", tta=False)),
                               reference_prediction, atol=1e-6)


def test_class_slot_is_folded(reference_dir, tmp_path):
    """A (1, N+1, D) table loaded into a model whose table is (1, N, D): slot 0 is added
    to every patch position."""
    rng = np.random.default_rng(0)
    cfg = tiny_config(pos_embed="learned")
    table = rng.normal(size=(1, cfg.num_patches + 1, cfg.width)).astype(np.float32)

    def edit(t):
        t["backbone.pos_embed"] = table
        return t

    out = _rewrite(reference_dir, tmp_path, edit, lambda c: dict(c, pos_embed="learned"))
    report = []
    model = SonichuModel.from_pretrained(out, report=report)
    np.testing.assert_array_equal(np.asarray(model.backbone.pos_embed[...]), table[:, 1:] + table[:, :1])
    assert any("folded" in note for _, note in report[0].notes)


def test_batchnorm_counter_is_ignored(reference_dir):
    report = []
    SonichuModel.from_pretrained(reference_dir, report=report)
    ignored = [name for name, _ in report[0].ignored]
    assert ignored and all(name.endswith("num_batches_tracked") for name in ignored)
    assert report[0].ok


def test_missing_and_extra_tensors_are_named(reference_dir, tmp_path):
    def edit(t):
        del t["heads.HC.final_layer.bias"]
        t["backbone.blocks.0.attn.rel_pos"] = np.zeros((3,), np.float32)
        return t

    out = _rewrite(reference_dir, tmp_path, edit)
    with pytest.raises(ConversionError) as info:
        SonichuModel.from_pretrained(out)
    message = str(info.value)
    assert "heads/HC/final/bias: 4 parameters, 1 tensor" in message  # a head partly present: never new
    assert "rel_pos" not in message  # unused tensors alone do not stop loading
    with pytest.raises(ConversionError) as info:
        SonichuModel.from_pretrained(out, strict=True)
    assert "backbone.blocks.0.attn.rel_pos: 3 parameters, 1 tensor" in str(info.value)


def test_shape_mismatch_names_tensor_and_shapes(reference_dir, tmp_path):
    def edit(t):
        t["heads.FA.final_layer.weight"] = np.zeros((5, 32, 1, 1), np.float32)
        return t

    with pytest.raises(ConversionError) as info:
        SonichuModel.from_pretrained(_rewrite(reference_dir, tmp_path, edit))
    message = str(info.value)
    assert "heads.FA.final_layer.weight" in message and "(1, 1, 32, 5)" in message and "(1, 1, 32, 4)" in message


def test_unknown_task_lists_valid_tasks(reference_dir):
    model = SonichuModel.from_pretrained(reference_dir)
    with pytest.raises(KeyError, match="valid tasks: AOP, FUGC"):
        model.predict(random_images(1, model.cfg), "femur")


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        SonichuModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(InputError, match="holds none of flax_model.safetensors, model.safetensors"):
        SonichuModel.from_pretrained(tmp_path)


def test_flax_checkpoint_round_trip(tmp_path):
    cfg = tiny_config(pos_embed="learned_cls_folded", head_sharing="shared_trunk")
    model = numpy_model(cfg, seed=4)
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / FLAX_WEIGHTS_NAME)
    loaded = SonichuModel.from_pretrained(tmp_path)
    before, after = flat_state(model), flat_state(loaded)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_sincos_table_matches_closed_form():
    width, grid = 16, (3, 5)
    table = sincos_2d_table(width, grid)
    omega = 1.0 / 10000 ** (np.arange(4) / 4)
    for row in range(grid[0]):
        for col in range(grid[1]):
            v = table[row * grid[1] + col]
            np.testing.assert_allclose(v[:4], np.sin(col * omega), atol=1e-6)
            np.testing.assert_allclose(v[4:8], np.cos(col * omega), atol=1e-6)
            np.testing.assert_allclose(v[8:12], np.sin(row * omega), atol=1e-6)
            np.testing.assert_allclose(v[12:], np.cos(row * omega), atol=1e-6)


def test_convert_package_needs_no_jax():
    code = "import sys, sonichu_jax.convert, sonichu_jax.config; assert 'jax' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_variable_without_a_value_is_an_error():
    """Building a model from arrays never keeps an abstract (shape-only) variable."""
    from sonichu_jax.checkpoint import abstract_model, expected_shapes, model_from_arrays
    from sonichu_jax.config import tiny_config
    from sonichu_jax.errors import InputError

    cfg = tiny_config()
    arrays = {p: np.zeros(s, np.float32) for p, s in expected_shapes(abstract_model(cfg)).items()}
    del arrays["backbone/norm/scale"]
    with pytest.raises(InputError, match="no value for 1 variables, e.g. backbone/norm/scale"):
        model_from_arrays(cfg, arrays)
