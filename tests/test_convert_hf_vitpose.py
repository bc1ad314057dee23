"""Parity against transformers' own VitPose (an independent PyTorch implementation), and
export back to it: random weights, 256x192, small width, non-default layer_norm_eps."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import torch_refs  # noqa: E402
from sonichu_jax import checkpoint  # noqa: E402
from sonichu_jax.cli import main as cli_main  # noqa: E402
from sonichu_jax.nn.sonichu import SonichuModel  # noqa: E402

pytestmark = pytest.mark.slow  # importing transformers alone takes ~15 s here


def hf_model(simple: bool, seed: int):
    backbone = transformers.VitPoseBackboneConfig(
        image_size=[256, 192], patch_size=[16, 16], hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        layer_norm_eps=1e-5, out_indices=[2],
    )
    config = transformers.VitPoseConfig(backbone_config=backbone, use_simple_decoder=simple, num_labels=5)
    # 64x48 heatmaps: a strongly scaled final layer keeps them peaked
    return torch_refs.randomize(transformers.VitPoseForPoseEstimation(config), seed=seed, final_scale=80.0)


@pytest.mark.parametrize("simple", [False, True], ids=["classic", "simple"])
def test_transformers_vitpose_parity_and_export(tmp_path, simple):
    ref = hf_model(simple, seed=10 + simple)
    ref.save_pretrained(str(tmp_path / "hf"))
    assert cli_main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "flax"), "--task-name", "pose"]) == 0
    model = SonichuModel.from_pretrained(tmp_path / "flax")
    assert model.cfg.layer_norm_eps == 1e-5 and model.cfg.head_kind == ("simple" if simple else "classic")
    x = np.random.default_rng(0).normal(size=(2, 256, 192, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).heatmaps
    assert torch_refs.peak_softmax(theirs) > 0.1
    theirs = theirs.permute(0, 2, 3, 1).numpy()
    ours = np.asarray(model.heatmaps(x, "pose"))
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-5
    argmax = lambda h: h.reshape(2, -1, 5).argmax(1)  # noqa: E731
    np.testing.assert_array_equal(argmax(ours), argmax(theirs))

    # Back out: transformers loads our export strictly and every tensor is bit-identical.
    checkpoint.export_pytorch(model, tmp_path / "back", layout="hf-vitpose")
    back = transformers.VitPoseForPoseEstimation.from_pretrained(str(tmp_path / "back"))
    before = load_file(str(tmp_path / "hf" / "model.safetensors"))
    after = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(before) == set(after)
    for name, tensor in before.items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, after[name]), name
    missing, unexpected = back.load_state_dict(after, strict=True)
    assert not missing and not unexpected


def _mmpose_name(name: str) -> str:
    """transformers VitPose names -> those of the official mmpose ViTPose checkpoint (the
    inverse of transformers' own conversion script's table)."""
    for pattern, repl in (
        (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
        (r"^backbone\.embeddings\.position_embeddings$", "backbone.pos_embed"),
        (r"^backbone\.encoder\.layer\.(\d+)\.layernorm_before\.", r"backbone.blocks.\1.norm1."),
        (r"^backbone\.encoder\.layer\.(\d+)\.layernorm_after\.", r"backbone.blocks.\1.norm2."),
        (r"^backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"backbone.blocks.\1.attn.proj."),
        (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.", r"backbone.blocks.\1.mlp."),
        (r"^backbone\.layernorm\.", "backbone.last_norm."),
        (r"^head\.deconv1\.", "keypoint_head.deconv_layers.0."),
        (r"^head\.batchnorm1\.", "keypoint_head.deconv_layers.1."),
        (r"^head\.deconv2\.", "keypoint_head.deconv_layers.3."),
        (r"^head\.batchnorm2\.", "keypoint_head.deconv_layers.4."),
        (r"^head\.conv\.", "keypoint_head.final_layer."),
    ):
        name, n = re.subn(pattern, repl, name)
        if n:
            return name
    raise AssertionError(f"no mmpose name for {name}")


def mmpose_state(hf_state: dict) -> dict:
    """The official checkpoint's state dict: fused qkv, an (unused) class token."""
    out, qkv = {}, {}
    for name, tensor in hf_state.items():
        m = re.match(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", name)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = tensor
        else:
            out[_mmpose_name(name)] = tensor
    for (layer, kind), parts in qkv.items():
        out[f"backbone.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    out["backbone.cls_token"] = torch.zeros(1, 1, out["backbone.pos_embed"].shape[-1])
    return out


def test_transformers_vitpose_saved_as_mmpose_pth(tmp_path):
    """transformers' VitPose (an independent implementation, classic head) saved the way
    mmpose distributes ViTPose: torch.save({"meta": ..., "state_dict": ...}) in a .pth,
    loaded on first contact with no config.json, against transformers' heatmaps."""
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.reference.modeling_sonichu import soft_argmax

    backbone = transformers.VitPoseBackboneConfig(
        image_size=[256, 192], patch_size=[16, 16], hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        layer_norm_eps=1e-6, out_indices=[2])
    config = transformers.VitPoseConfig(backbone_config=backbone, use_simple_decoder=False, num_labels=5)
    ref = torch_refs.randomize(transformers.VitPoseForPoseEstimation(config), seed=21, final_scale=80.0)
    meta = {"mmpose_version": "0.24.0", "epoch": 210, "env_info": "sys.platform: linux",
            "dataset_meta": {"sigmas": np.linspace(0.025, 0.1, 5)}}  # numpy: read as an inert placeholder
    torch.save({"meta": meta, "state_dict": mmpose_state(ref.state_dict())}, tmp_path / "vitpose_b_coco_256x192.pth")
    report = []
    model = SonichuModel.from_pretrained(tmp_path / "vitpose_b_coco_256x192.pth", report=report)
    assert report[0].layout == "vitpose" and report[0].ok, report[0].summary()
    assert "state dict taken from the container entry 'state_dict'" in report[0].context[0]
    assert (model.cfg.num_heads, model.cfg.patch_padding, model.cfg.image_size) == (2, 2, (256, 192))
    x = np.random.default_rng(1).normal(size=(2, 256, 192, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).heatmaps
    assert torch_refs.peak_softmax(theirs) > 0.1
    assert np.linalg.norm(model.heatmaps(x, "keypoints") - theirs.permute(0, 2, 3, 1).numpy()) \
        <= 1e-5 * np.linalg.norm(theirs.numpy())
    coords = np.asarray(model.predict(x, "keypoints", tta=False))
    assert np.abs(coords - soft_argmax(theirs, 1.0).numpy()).max() <= 2e-5
