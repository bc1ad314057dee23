"""Converter parity and round trips against PyTorch modules with official names:
Sonichu (this project's reference), mmpose ViTPose, timm ViT, I-JEPA encoder + predictor."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import torch_refs  # noqa: E402
from conftest import numpy_model  # noqa: E402
from sonichu_jax import checkpoint  # noqa: E402
from sonichu_jax.config import TaskSpec, tiny_config  # noqa: E402
from sonichu_jax.convert import LAYOUTS, Options, SafetensorsSource, convert_tensors, infer_config, state_defaults  # noqa: E402
from sonichu_jax.convert.shapes import predictor_shapes  # noqa: E402
from sonichu_jax.nn.sonichu import SonichuModel  # noqa: E402

IMAGE = (64, 48)


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def images(n=2, size=IMAGE, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *size, 3)).astype(np.float32)


def nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def check_heatmaps(jax_model: SonichuModel, task: str, torch_heatmaps_nchw, x):
    ours = np.asarray(jax_model.heatmaps(x, task))
    theirs = torch_heatmaps_nchw.permute(0, 2, 3, 1).numpy()
    assert torch_refs.peak_softmax(torch_heatmaps_nchw) > 0.1, "heatmaps too flat to test anything"
    assert rel_l2(ours, theirs) <= 1e-5
    flat = lambda h: h.reshape(h.shape[0], -1, h.shape[-1]).argmax(1)  # noqa: E731
    np.testing.assert_array_equal(flat(ours), flat(theirs))


def convert_file(path, layout, **infer_kwargs):
    """The CLI's steps in memory: infer the config, convert, build the model."""
    source = SafetensorsSource(path)
    inferred = infer_config(source, LAYOUTS[layout], **infer_kwargs)
    cfg = inferred.cfg
    expected = checkpoint.expected_shapes(checkpoint.abstract_model(cfg))
    arrays, report = convert_tensors(source, LAYOUTS[layout], cfg, expected, state_defaults(cfg),
                                     options=Options(source_grid=inferred.source_grid))
    assert report.ok, report.summary()
    return checkpoint.model_from_arrays(cfg, arrays), report, inferred


# -- Sonichu layout: PyTorch -> Flax -> PyTorch is bit-exact ---------------------------------
SONICHU_VARIANTS = {
    "per_task_sincos": dict(),
    "folded_table": dict(pos_embed="learned_cls_folded", patch_padding=2),
    "shared_trunk": dict(head_sharing="shared_trunk", pos_embed="learned"),
    "simple": dict(head_kind="simple"),
}


@pytest.mark.parametrize("variant", sorted(SONICHU_VARIANTS))
def test_sonichu_round_trip_bit_exact(tmp_path, torch_ref, variant):
    cfg = tiny_config(image_size=IMAGE, patch_size=16, tasks=(TaskSpec("A", 3), TaskSpec("B", 2)),
                      **SONICHU_VARIANTS[variant])
    src = torch_ref.randomize_(torch_ref.SonichuModel(cfg.to_dict()), seed=1).eval()
    src.save_pretrained(str(tmp_path / "src"))
    model = SonichuModel.from_pretrained(tmp_path / "src")
    checkpoint.export_pytorch(model, tmp_path / "out", layout="sonichu")
    back = torch_ref.SonichuModel.from_pretrained(str(tmp_path / "out"))  # strict=True inside
    before = load_file(str(tmp_path / "src" / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(before) == set(after)
    for name, tensor in before.items():
        if name.endswith("num_batches_tracked"):
            continue  # Flax keeps no counter; export writes 0 (eval never reads it)
        assert torch.equal(tensor, after[name]), name
    x = images()
    with torch.no_grad():
        np.testing.assert_array_equal(back.heatmaps(nchw(x), "A").numpy(), src.heatmaps(nchw(x), "A").numpy())


def test_sonichu_config_inferred_without_config_json(tmp_path, torch_ref):
    cfg = tiny_config(image_size=IMAGE, patch_size=16, pos_embed="learned_cls_folded", num_heads=1,
                      tasks=(TaskSpec("A", 3),))
    torch_ref.randomize_(torch_ref.SonichuModel(cfg.to_dict()), seed=2).save_pretrained(str(tmp_path))
    os.remove(tmp_path / "config.json")
    inferred = infer_config(SafetensorsSource(tmp_path / "model.safetensors"), LAYOUTS["sonichu"])
    assert inferred.cfg.replace(num_heads=1) == cfg
    assert any("num_heads" in note for note in inferred.notes)


# -- mmpose ViTPose ----------------------------------------------------------------------------
@pytest.mark.parametrize("head_kind", ["classic", "simple"])
def test_mmpose_vitpose_parity(tmp_path, head_kind):
    tcfg = torch_refs.torch_cfg(image_size=list(IMAGE), width=64, depth=2, num_heads=2, patch_padding=2,
                                head_kind=head_kind, deconv_filters=32)
    ref = torch_refs.randomize(torch_refs.ViTPoseModel(tcfg, 5), seed=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "vitpose.safetensors"))
    model, report, inferred = convert_file(tmp_path / "vitpose.safetensors", "vitpose", task_name="pose",
                                           config={"num_heads": 2})
    assert inferred.cfg.pos_embed == "learned_cls_folded" and inferred.cfg.patch_padding == 2
    assert inferred.cfg.head_kind == head_kind and inferred.cfg.task_names == ("pose",)
    assert [s for s, _ in report.ignored if "cls_token" in s] == ["backbone.cls_token"]
    x = images()
    with torch.no_grad():
        check_heatmaps(model, "pose", ref(nchw(x)), x)


def test_vitpose_table_resized_to_another_grid(tmp_path):
    """A 64x48 ViTPose table fine-tuned at 64x64: bicubic resize, class slot kept aside."""
    tcfg = torch_refs.torch_cfg(image_size=list(IMAGE), width=64, depth=1, num_heads=2, patch_padding=2,
                                deconv_filters=32)
    ref = torch_refs.randomize(torch_refs.ViTPoseModel(tcfg, 5), seed=4)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "v.safetensors"))
    source = SafetensorsSource(tmp_path / "v.safetensors")
    inferred = infer_config(source, LAYOUTS["vitpose"])
    cfg = inferred.cfg.replace(image_size=(64, 64))
    expected = checkpoint.expected_shapes(checkpoint.abstract_model(cfg))
    arrays, report = convert_tensors(source, LAYOUTS["vitpose"], cfg, expected,
                                     options=Options(source_grid=inferred.source_grid))
    assert report.ok, report.summary()
    assert ("backbone.pos_embed", "resized (4, 3) -> (4, 4) (bicubic, class slot kept aside)") in report.notes
    table = arrays["backbone/pos_embed"]
    assert table.shape == (1, 17, 64)
    original = ref.backbone.pos_embed.detach().numpy()
    np.testing.assert_array_equal(table[0, 0], original[0, 0])  # class slot untouched


# -- timm ViT (backbone only) ---------------------------------------------------------------
def test_timm_backbone_features_and_heads_not_provided(tmp_path):
    tcfg = torch_refs.torch_cfg(image_size=list(IMAGE), width=64, depth=2, num_heads=2)
    ref = torch_refs.randomize(torch_refs.timm_vit(tcfg), seed=5)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    cfg = tiny_config(image_size=IMAGE, patch_size=16, pos_embed="learned", tasks=(TaskSpec("A", 3),))
    model = numpy_model(cfg)
    head_before = np.asarray(model.heads["A"].final.kernel[...]).copy()
    report = checkpoint.load_backbone(model, tmp_path / "timm.safetensors")
    assert report.layout == "timm-vit"
    assert "heads/A/final/kernel" in report.not_provided
    np.testing.assert_array_equal(np.asarray(model.heads["A"].final.kernel[...]), head_before)
    x = images()
    with torch.no_grad():
        theirs = ref(nchw(x)).numpy()
    model.eval()
    assert rel_l2(model.backbone(x), theirs) <= 1e-5


@pytest.mark.parametrize("name,reason", [("blocks.0.ls1.gamma", "layer scale"), ("blocks.1.attn.q_norm.weight", "q/k norm")])
def test_timm_refuses_unsupported_by_name(tmp_path, name, reason):
    tcfg = torch_refs.torch_cfg(image_size=list(IMAGE), width=64, depth=2, num_heads=2)
    state = {k: v.contiguous() for k, v in torch_refs.timm_vit(tcfg).state_dict().items()}
    state[name] = torch.ones(64)
    save_file(state, str(tmp_path / "timm.safetensors"))
    model = numpy_model(tiny_config(image_size=IMAGE, patch_size=16, pos_embed="learned"))
    with pytest.raises(checkpoint.ConversionError, match=rf"refused: {name}: .*{reason}"):
        checkpoint.load_backbone(model, tmp_path / "timm.safetensors")


# -- I-JEPA encoder + predictor -------------------------------------------------------------
def test_ijepa_encoder_and_predictor_parity(tmp_path):
    tcfg = torch_refs.torch_cfg(image_size=[64, 64], width=64, depth=2, num_heads=2)
    encoder = torch_refs.randomize(torch_refs.Backbone(tcfg), seed=6)
    target = torch_refs.randomize(torch_refs.Backbone(tcfg), seed=7)
    predictor = torch_refs.randomize(torch_refs.IJepaPredictor(tcfg, width=32, depth=2), seed=8)
    save_file(torch_refs.ijepa_state(encoder, target, predictor), str(tmp_path / "ijepa.safetensors"))
    source = SafetensorsSource(tmp_path / "ijepa.safetensors")
    inferred = infer_config(source, LAYOUTS["ijepa"], config={"num_heads": 2})
    cfg = inferred.cfg
    assert cfg.pos_embed == "sincos" and inferred.predictor == {"width": 32, "depth": 2, "num_heads": 2}
    arrays, report = convert_tensors(source, LAYOUTS["ijepa"], cfg, predictor_shapes(cfg, 32, 2),
                                     only=("predictor/",))
    assert report.ok, report.summary()
    assert all(s.startswith("encoder.") for s, _ in report.ignored)  # the other encoder, by name
    assert {t.split("/")[0] for _, t in report.skipped} == {"backbone"}
    model = numpy_model(cfg)
    checkpoint.load_backbone(model, tmp_path / "ijepa.safetensors")
    model.eval()
    x = images(size=(64, 64))
    with torch.no_grad():
        features = target(nchw(x))
    assert rel_l2(model.backbone(x), features.numpy()) <= 1e-5
    pred = torch_refs.predictor_from_arrays(cfg, 32, 2, arrays)
    rng = np.random.default_rng(0)
    context_idx = np.sort(rng.permutation(16)[:10]).reshape(1, 10).repeat(2, 0)
    target_idx = np.array([[0, 1, 4, 5]] * 2)
    ctx = np.take_along_axis(features.numpy(), context_idx[..., None], axis=1)
    with torch.no_grad():
        theirs = predictor(torch.from_numpy(ctx), torch.from_numpy(context_idx), torch.from_numpy(target_idx)).numpy()
    assert rel_l2(pred(ctx, context_idx, target_idx), theirs) <= 1e-5
