"""`sonichu-jax convert`: outputs, the report, exports, and failures that write nothing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

import torch_refs  # noqa: E402
from sonichu_jax.cli import main  # noqa: E402
from sonichu_jax.config import TaskSpec, tiny_config  # noqa: E402
from sonichu_jax.nn.sonichu import SonichuModel  # noqa: E402


@pytest.fixture()
def sonichu_dir(tmp_path, torch_ref):
    cfg = tiny_config(image_size=(64, 48), patch_size=16, tasks=(TaskSpec("A", 3), TaskSpec("B", 2)))
    model = torch_ref.randomize_(torch_ref.SonichuModel(cfg.to_dict()), seed=3).eval()
    model.save_pretrained(str(tmp_path / "src"))
    return tmp_path / "src", model


def test_convert_to_flax_then_back_to_sonichu(tmp_path, sonichu_dir, torch_ref, capsys):
    src, ref = sonichu_dir
    assert main(["convert", str(src), "--out", str(tmp_path / "flax"), "--report", "--report-json",
                 str(tmp_path / "r.json")]) == 0
    assert sorted(os.listdir(tmp_path / "flax")) == ["config.json", "flax_model.safetensors", "preprocessor_config.json"]
    out = capsys.readouterr().out
    assert "layout sonichu:" in out and "mapped: backbone.blocks.0.attn.qkv.weight -> backbone/blocks/0/attn/qkv/kernel" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    model = SonichuModel.from_pretrained(tmp_path / "flax")
    x = np.random.default_rng(0).normal(size=(1, 64, 48, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref.heatmaps(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), "B").permute(0, 2, 3, 1).numpy()
    ours = np.asarray(model.heatmaps(x, "B"))
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-5
    # flax -> sonichu export through the CLI loads strictly into the reference
    assert main(["convert", str(tmp_path / "flax"), "--out", str(tmp_path / "pt"), "--to", "sonichu"]) == 0
    back = torch_ref.SonichuModel.from_pretrained(str(tmp_path / "pt"))
    for name, tensor in ref.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, back.state_dict()[name]), name


def test_mismatch_exits_2_and_writes_nothing(tmp_path, sonichu_dir, capsys):
    src, ref = sonichu_dir
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    state["backbone.blocks.0.mlp.fc1.weight"] = torch.zeros(8, 64)
    state["backbone.extra_thing"] = torch.zeros(2)
    del state["heads.A.final_layer.bias"]
    save_file(state, str(src / "model.safetensors"))
    out_dir = tmp_path / "out"
    assert main(["convert", str(src), "--out", str(out_dir), "--report-json", str(tmp_path / "r.json")]) == 2
    assert not out_dir.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []  # no temporary left behind
    captured = capsys.readouterr()
    assert "backbone.extra_thing: 2 parameters, 1 tensor" in captured.out  # reported, not an error by itself
    assert "ERROR 1 model variable is missing from the checkpoint (3 parameters):\n    heads/A/final/bias" in captured.out
    assert "shape mismatch: backbone.blocks.0.mlp.fc1.weight" in captured.out
    assert "nothing written" in captured.err
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_existing_output_needs_force(tmp_path, sonichu_dir):
    src, _ = sonichu_dir
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert main(["convert", str(src), "--out", str(tmp_path / "out")]) == 2
    assert (tmp_path / "out" / "keep.txt").exists()


def test_ijepa_pth_with_predictor(tmp_path):
    tcfg = torch_refs.torch_cfg(image_size=[64, 64], width=64, depth=2, num_heads=2)
    parts = [torch_refs.randomize(torch_refs.Backbone(tcfg), seed=s) for s in (1, 2)]
    predictor = torch_refs.randomize(torch_refs.IJepaPredictor(tcfg, width=32, depth=1), seed=3)
    nested = {name: {f"module.{k}": v for k, v in m.state_dict().items()}
              for name, m in zip(("encoder", "target_encoder", "predictor"), (*parts, predictor))}
    torch.save({**nested, "epoch": 3, "opt": {"state": {}}}, str(tmp_path / "ijepa.pth.tar"))
    assert main(["convert", str(tmp_path / "ijepa.pth.tar"), "--out", str(tmp_path / "out"), "--num-heads", "2"]) == 0
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["config.json", "flax_model.safetensors", "flax_predictor.safetensors",
                       "predictor_config.json", "preprocessor_config.json"]
    assert json.loads((tmp_path / "out" / "predictor_config.json").read_text()) == {"width": 32, "depth": 1, "num_heads": 2}


# -- --force never loses data (issue 11) ------------------------------------------------------------
def _listing(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_force_onto_the_source_directory_is_refused_and_deletes_nothing(tmp_path, sonichu_dir, capsys):
    """Before, `convert DIR --out DIR --force` deleted the source checkpoint and everything else in DIR."""
    src, _ = sonichu_dir
    (src / "README.md").write_text("the publisher's notes")
    before = _listing(src)
    for out in (src, src / "flax", tmp_path):  # the input itself, inside it, holding it
        assert main(["convert", str(src), "--out", str(out), "--force"]) == 2
        assert "overlap" in capsys.readouterr().err
    assert _listing(src) == before


def test_force_replaces_only_what_convert_writes(tmp_path, sonichu_dir):
    src, _ = sonichu_dir
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    assert main(["convert", str(src), "--out", str(out)]) == 2  # not empty: needs --force
    assert main(["convert", str(src), "--out", str(out), "--force"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "flax_model.safetensors", "notes.txt", "preprocessor_config.json"]
    assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "config.json").read_text())["tasks"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []
    # a weights file this conversion would not replace would be read instead: refused, kept
    (out / "model.safetensors").write_bytes(b"stale")
    assert main(["convert", str(src), "--out", str(out), "--force", "--to", "flax"]) == 2
    assert (out / "model.safetensors").read_bytes() == b"stale"
