"""Parity against transformers' own VitPose (an independent PyTorch implementation), and
export back to it: random weights, 256x192, small width, non-default layer_norm_eps."""

from __future__ import annotations

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
