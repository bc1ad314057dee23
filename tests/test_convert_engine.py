"""The converter engine without JAX or torch: isolation, safetensors I/O, position
tables, and every failure path of a conversion, with the names in the message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sonichu_jax.config import TaskSpec, tiny_config
from sonichu_jax.convert import (
    LAYOUTS,
    ConversionError,
    SafetensorsSource,
    convert_tensors,
    export_tensors,
    write_safetensors,
)
from sonichu_jax.posembed import bicubic_matrix, resize_grid_table, sincos_2d
from sonichu_jax.convert.transforms import CLASS_SLOT_ALWAYS, position_table


def test_import_leaves_jax_and_torch_out():
    code = "import sys, sonichu_jax.convert; print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_safetensors_round_trip_and_bfloat16(tmp_path):
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array(7, np.int64), "e": np.zeros((0, 2), np.float32)}
    write_safetensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    from safetensors.numpy import load_file

    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())
    source = SafetensorsSource(tmp_path / "x.safetensors")
    assert source.metadata() == {"k": "v"} and source.shape("a") == (3, 4)
    # bfloat16 = top 16 bits of float32: 1.5 is 0x3FC0
    raw = b'{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    (tmp_path / "b.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + bytes([0xC0, 0x3F, 0x80, 0xBF]))
    np.testing.assert_array_equal(SafetensorsSource(tmp_path / "b.safetensors").get("w"), [1.5, -1.0])


# -- position tables --------------------------------------------------------------------------
@pytest.mark.parametrize("grids", [((16, 12), (16, 16)), ((14, 14), (16, 16)), ((16, 16), (12, 10)), ((4, 3), (9, 7))])
def test_bicubic_matches_torch(grids):
    torch = pytest.importorskip("torch")
    (hi, wi), (ho, wo) = grids
    table = np.random.default_rng(0).normal(size=(hi * wi, 8)).astype(np.float32)
    image = torch.from_numpy(table.reshape(hi, wi, 8).transpose(2, 0, 1).copy())[None]
    ref = torch.nn.functional.interpolate(image, size=(ho, wo), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(resize_grid_table(table, (hi, wi), (ho, wo)), ref[0].permute(1, 2, 0).reshape(-1, 8).numpy(), atol=5e-6)


def test_bicubic_is_a_smooth_interpolation():
    # Rows of the matrix are partitions of unity: constants stay constant; same size is the identity.
    np.testing.assert_allclose(bicubic_matrix(12, 16).sum(1), 1.0)
    np.testing.assert_allclose(bicubic_matrix(7, 7), np.eye(7), atol=1e-12)
    # A smooth field sampled on a coarse grid and resized is close to the field on the fine grid.
    def field(h, w):
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        return (np.sin(2.0 * xs + 1.0) * np.cos(1.5 * ys))[..., None]

    resized = resize_grid_table(field(16, 12).reshape(-1, 1), (16, 12), (16, 16)).reshape(16, 16, 1)
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(resized[inner] - field(16, 16)[inner]).max() < 1e-2


def test_position_table_transform_resizes_and_keeps_class_slot():
    table = np.random.default_rng(1).normal(size=(1, 16 * 12 + 1, 8)).astype(np.float32)
    tf = position_table((16, 16), (16, 12), CLASS_SLOT_ALWAYS)
    out, note = tf.forward((table,), (1, 257, 8))
    assert out.shape == (1, 257, 8) and note == "resized (16, 12) -> (16, 16) (bicubic, class slot kept aside)"
    np.testing.assert_array_equal(out[0, 0], table[0, 0])
    folded, note = tf.forward((table,), (1, 256, 8))
    assert "folded" in note
    np.testing.assert_allclose(folded[0], out[0, 1:] + out[0, :1], atol=1e-6)


def test_sincos_target_is_recomputed_not_interpolated():
    tf = position_table((4, 4), (3, 3), CLASS_SLOT_ALWAYS, fixed_sincos=True)
    out, note = tf.forward((sincos_2d(8, (3, 3))[None],), (1, 16, 8))
    np.testing.assert_array_equal(out[0], sincos_2d(8, (4, 4)))
    assert "recomputed" in note


# -- failure paths -----------------------------------------------------------------------------
CFG = tiny_config(image_size=(32, 32), patch_size=16, width=8, depth=1, num_heads=2, deconv_filters=4,
                  pos_embed="learned", tasks=(TaskSpec("A", 2),))


class DictSource(dict):
    def get(self, name):  # noqa: A003 - the TensorSource protocol
        return self[name]

    def shape(self, name):
        return self[name].shape


def flax_state(cfg=CFG):
    """A complete state in Flax paths (shapes only matter here), without JAX."""
    rng = np.random.default_rng(0)
    d, f = cfg.width, cfg.deconv_filters
    shapes = {"backbone/patch_embed/proj/kernel": (16, 16, 3, d), "backbone/patch_embed/proj/bias": (d,),
              "backbone/pos_embed": (1, 4, d), "backbone/norm/scale": (d,), "backbone/norm/bias": (d,)}
    for n, shape in {"norm1/scale": (d,), "norm1/bias": (d,), "attn/qkv/kernel": (d, 3 * d), "attn/qkv/bias": (3 * d,),
                     "attn/proj/kernel": (d, d), "attn/proj/bias": (d,), "norm2/scale": (d,), "norm2/bias": (d,),
                     "mlp/fc1/kernel": (d, 4 * d), "mlp/fc1/bias": (4 * d,), "mlp/fc2/kernel": (4 * d, d),
                     "mlp/fc2/bias": (d,)}.items():
        shapes[f"backbone/blocks/0/{n}"] = shape
    for j, cin in enumerate((d, f)):
        shapes[f"heads/A/trunk/deconvs/{j}/kernel"] = (4, 4, cin, f)
        for p in ("scale", "bias", "mean", "var"):
            shapes[f"heads/A/trunk/norms/{j}/{p}"] = (f,)
    shapes.update({"heads/A/final/kernel": (1, 1, f, 2), "heads/A/final/bias": (2,)})
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def torch_names(layout="sonichu"):
    flat = flax_state()
    return flat, DictSource(export_tensors(flat, LAYOUTS[layout], CFG))


def convert(source, layout="sonichu"):
    expected = {k: v.shape for k, v in flax_state().items()}
    return convert_tensors(source, LAYOUTS[layout], CFG, expected)


@pytest.mark.parametrize("layout", ["sonichu", "vitpose", "hf-vitpose"])
def test_export_then_convert_is_exact(layout):
    flat, source = torch_names(layout)
    arrays, report = convert(source, layout)
    assert report.ok, report.summary()
    for path, value in flat.items():
        np.testing.assert_array_equal(arrays[path], value, err_msg=path)
    assert sum(name.endswith("num_batches_tracked") for name in source) == 2  # strict PyTorch loading needs them


def test_missing_tensor_is_named():
    _, source = torch_names()
    del source["backbone.blocks.0.mlp.fc2.weight"]
    _, report = convert(source)
    assert report.unfilled == ["backbone/blocks/0/mlp/fc2/kernel"]
    assert ("1 model variable is missing from the checkpoint (256 parameters):\n"
            "    backbone/blocks/0/mlp/fc2/kernel: 256 parameters, 1 tensor") in str(ConversionError(report))


def test_extra_tensor_is_named():
    _, source = torch_names()
    source["backbone.blocks.0.attn.rel_pos_h"] = np.zeros(3, np.float32)
    source["heads.B.final_layer.weight"] = np.zeros((2, 4, 1, 1), np.float32)  # a task the model lacks
    _, report = convert(source)
    assert sorted(report.unmapped) == ["backbone.blocks.0.attn.rel_pos_h", "heads.B.final_layer.weight"]
    assert report.errors() == []  # by default unused tensors are reported, not refused
    message = str(ConversionError(report, strict=True))
    assert "2 tensors of the checkpoint are not used by the model (11 parameters)" in message
    assert "backbone.blocks.0.attn.rel_pos_h: 3 parameters, 1 tensor" in message
    assert "heads.B.*: 8 parameters, 1 tensor" in message


def test_wrong_shape_names_tensor_and_both_shapes():
    _, source = torch_names()
    source["backbone.blocks.0.mlp.fc1.weight"] = np.zeros((16, 8), np.float32)
    _, report = convert(source)
    message = str(ConversionError(report))
    assert ("shape mismatch: backbone.blocks.0.mlp.fc1.weight -> backbone/blocks/0/mlp/fc1/kernel: "
            "converted shape (8, 16), the model expects (8, 32)") in message


def test_missing_part_of_fused_qkv_is_named():
    _, source = torch_names("hf-vitpose")
    del source["backbone.encoder.layer.0.attention.attention.value.weight"]
    _, report = convert(source, "hf-vitpose")
    assert ("backbone/blocks/0/attn/qkv/kernel needs backbone.encoder.layer.0.attention.attention.value.weight, "
            "missing from the checkpoint") in str(ConversionError(report))


def test_moe_file_is_refused_by_name():
    _, source = torch_names("vitpose")
    source["backbone.blocks.0.mlp.experts.0.weight"] = np.zeros((4, 32), np.float32)
    source["associate_keypoint_heads.0.final_layer.weight"] = np.zeros((2, 4, 1, 1), np.float32)
    _, report = convert(source, "vitpose")
    message = str(ConversionError(report))
    assert "refused: backbone.blocks.0.mlp.experts.0.weight: ViTPose+ mixture-of-experts" in message
    assert "refused: associate_keypoint_heads.0.final_layer.weight: ViTPose+ per-dataset extra heads" in message
