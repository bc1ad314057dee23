"""Opening checkpoints as publishers ship them: containers inside torch pickles, pickles
that would run code, legacy files, sharded safetensors, damaged safetensors headers, rename
rules, the grouped summaries and config.json value types. No JAX model is run here."""

from __future__ import annotations

import argparse
import json
import os
import re
import struct

import numpy as np
import pytest

from sonichu_jax.cli import main
from sonichu_jax.config import ModelConfig, card_config, tiny_config
from sonichu_jax.convert import SafetensorsSource, ShardedSource, open_checkpoint, write_safetensors
from sonichu_jax.convert.config_json import read_config_json
from sonichu_jax.convert.rename import RenamedSource, parse_rules
from sonichu_jax.convert.summary import group_apart, human_count, tensor_tree
from sonichu_jax.errors import ConfigError, InputError

torch = pytest.importorskip("torch")

STATE = {"backbone.blocks.0.attn.qkv.weight": np.ones((6, 2), np.float32), "heads.HC.final_layer.bias": np.zeros(4, np.float32)}


def _torch_state(prefix: str = "") -> dict:
    return {prefix + k: torch.from_numpy(v) for k, v in STATE.items()}


# -- containers ---------------------------------------------------------------------------------
CONTAINERS = {
    # mmpose / mmengine: meta (with numpy dataset metadata), state_dict, optimizer
    "mmpose": (lambda: {"meta": {"mmpose_version": "0.24.0", "dataset_meta": {"sigmas": np.ones(3)}, "epoch": 210},
                        "state_dict": _torch_state(), "optimizer": {"state": {}, "param_groups": []}}, "state_dict"),
    # DeiT / MAE: model (+ saved argparse arguments)
    "deit": (lambda: {"model": _torch_state(), "epoch": 300, "args": argparse.Namespace(lr=5e-4)}, "model"),
    # PyTorch Lightning: state_dict under the LightningModule's attribute name
    "lightning": (lambda: {"state_dict": _torch_state("model."), "epoch": 3, "global_step": 100,
                           "optimizer_states": [{}], "hyper_parameters": {"lr": 1e-3}}, "state_dict"),
    # timm training checkpoint: the weights first, their EMA as an alternative
    "timm": (lambda: {"state_dict": _torch_state(), "state_dict_ema": _torch_state(), "epoch": 9}, "state_dict"),
    # DINO: student and teacher, the teacher is the one to use
    "dino": (lambda: {"student": _torch_state("module."), "teacher": _torch_state(), "epoch": 100}, "teacher"),
    # a bare state dict
    "bare": (lambda: _torch_state(), None),
}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_state_dict_found_inside_containers(tmp_path, kind):
    make, entry = CONTAINERS[kind]
    torch.save(make(), tmp_path / "ckpt.pth")
    ckpt = open_checkpoint(tmp_path / "ckpt.pth")
    names = sorted(ckpt.source.keys())
    assert [n.split(".", 1)[-1] if n.startswith("model.") else n for n in names] == sorted(STATE)
    assert ckpt.entry == entry
    if entry:
        assert f"container entry {entry!r}" in ckpt.context[0]
    np.testing.assert_array_equal(ckpt.source.get(names[0]), STATE[names[0].removeprefix("model.")])


def test_entry_can_be_chosen_and_alternatives_are_named(tmp_path):
    torch.save(CONTAINERS["timm"][0](), tmp_path / "ckpt.pth")
    assert "also present: state_dict_ema" in open_checkpoint(tmp_path / "ckpt.pth").context[0]
    assert open_checkpoint(tmp_path / "ckpt.pth", entry="state_dict_ema").entry == "state_dict_ema"
    with pytest.raises(InputError, match="no entry 'ema' .*entries: state_dict, state_dict_ema, epoch"):
        open_checkpoint(tmp_path / "ckpt.pth", entry="ema")


def test_container_without_a_state_dict_lists_its_entries(tmp_path):
    torch.save({"weights_of_mine": {"a": {"b": 1}}, "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(InputError, match=r"no state dict found among its entries: weights_of_mine \(0 tensors\), epoch \(int\)"):
        open_checkpoint(tmp_path / "ckpt.pt")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _torch_state(), "trap": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(InputError) as info:
        open_checkpoint(tmp_path / "evil.pth")
    message = str(info.value)
    assert "could run code, so the file is refused" in message and "system" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_legacy_torch_file_loads(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) files cannot be memory-mapped;
    they were refused before."""
    torch.save({"state_dict": _torch_state()}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    ckpt = open_checkpoint(tmp_path / "old.pth")
    assert sorted(ckpt.source.keys()) == sorted(STATE) and ckpt.entry == "state_dict"


def test_not_a_torch_file_is_one_line(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match=r"cannot read .*junk.bin as a PyTorch checkpoint \(") as info:
        open_checkpoint(tmp_path / "junk.bin")
    assert "\n" not in str(info.value)


# -- sharded safetensors --------------------------------------------------------------------------
def _shards(tmp_path):
    rng = np.random.default_rng(0)
    a = {"backbone.x": rng.normal(size=(3, 2)).astype(np.float32)}
    b = {"heads.HC.y": rng.normal(size=(4,)).astype(np.float32), "heads.FA.z": np.arange(3, dtype=np.float32)}
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", a)
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", b)
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in a}, **{k: "model-00002-of-00002.safetensors" for k in b}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return {**a, **b}


def test_sharded_safetensors_directory(tmp_path):
    tensors = _shards(tmp_path)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.weights.endswith("model.safetensors.index.json") and isinstance(ckpt.source, ShardedSource)
    for name, value in tensors.items():
        assert ckpt.source.shape(name) == value.shape
        np.testing.assert_array_equal(ckpt.source.get(name), value)


def test_sharded_index_errors_name_the_shard(tmp_path):
    _shards(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["heads.HC.y"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="places heads.HC.y in model-00001-of-00002.safetensors, which does not hold it"):
        ShardedSource(tmp_path / "model.safetensors.index.json")
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(InputError, match="names the shard model-00002-of-00002.safetensors, which is missing"):
        ShardedSource(tmp_path / "model.safetensors.index.json")


# -- damaged safetensors: one line, exit 2, nothing written --------------------------------------
def _raw(header) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


DAMAGED = {
    "list_header": (_raw([1, 2]), "the header is a JSON list, not an object"),
    "no_data_offsets": (_raw({"w": {"dtype": "F32", "shape": [2]}}), "tensor w has no valid data_offsets"),
    "negative_shape": (_raw({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}) + bytes(8),
                       "tensor w has a negative shape"),
    "claims_more_bytes": (_raw({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}) + bytes(8),
                          "is truncated: its header declares 16 bytes of tensor data, the file holds 8"),
    "header_cut": (struct.pack("<Q", 400) + b'{"w": ', "is truncated: its header is cut short"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_safetensors_is_one_line(tmp_path, kind):
    data, expected = DAMAGED[kind]
    (tmp_path / "model.safetensors").write_bytes(data)
    with pytest.raises(InputError, match=expected) as info:
        SafetensorsSource(tmp_path / "model.safetensors")
    assert "\n" not in str(info.value)


def test_convert_of_truncated_file_exits_2_and_leaves_nothing(tmp_path, capsys):
    """Before, the real error was replaced by 'tensors declared but never written' from the
    writer's cleanup, with a traceback."""
    state = {"backbone.blocks.0.attn.qkv.weight": np.ones((192, 64), np.float32)}
    write_safetensors(tmp_path / "model.safetensors", state)
    with open(tmp_path / "model.safetensors", "r+b") as fh:
        fh.truncate(os.path.getsize(tmp_path / "model.safetensors") - 100)
    assert main(["convert", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is truncated" in err and "never written" not in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


# -- config.json value types ----------------------------------------------------------------------
@pytest.mark.parametrize("config,expected", [
    ({"model_type": "sonichu", "width": "64"}, "config width must be an integer >= 1, got '64'"),
    ({"model_type": "sonichu", "tasks": {"HC": "four"}}, "config tasks.HC must be a keypoint count"),
    ([{"width": 64}], "must hold a JSON object, got a list"),
    ({"hidden_size": "wide"}, "config hidden_size must be an integer >= 1, got 'wide'"),
    ({"image_size": [0, 64]}, r"config image_size must be \[height, width\]"),
])
def test_wrong_config_value_types_are_one_line(tmp_path, capsys, config, expected):
    write_safetensors(tmp_path / "ckpt" / "model.safetensors", dict(STATE))
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert main(["convert", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err) and "config.json" in err, err
    assert not (tmp_path / "out").exists()


def test_config_round_trip_and_foreign_keys_as_notes():
    cfg = card_config()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config keys: auto_map"):
        ModelConfig.from_dict({**cfg.to_dict(), "auto_map": {}})
    assert read_config_json({**cfg.to_dict(), "auto_map": {}}).notes == ["config.json keys not ours, ignored: auto_map"]


def test_config_is_written_atomically_with_checkpoint_keys(tmp_path):
    path = tiny_config().save(tmp_path, pretrained_parts=["backbone"])
    data = json.loads(open(path).read())
    assert data["pretrained_parts"] == ["backbone"] and ModelConfig.load(tmp_path) == tiny_config()
    assert os.listdir(tmp_path) == ["config.json"]


# -- rename rules ---------------------------------------------------------------------------------
class _Names(dict):
    def shape(self, name):
        return self[name].shape

    def get(self, name):  # noqa: A003 - the TensorSource protocol
        return self[name]


def test_rename_rules_apply_in_order_and_report():
    source = _Names({"decoders.HC.up.0.weight": np.zeros(1), "decoders.HC.out.weight": np.zeros(2)})
    renamed = RenamedSource(source, [r"\.up\.(\d+)\.=.deconv_layers.\1.", ("out", "final_layer"), r"^decoders\.=heads.",
                                     "never_matches=x"])
    assert sorted(renamed.keys()) == ["heads.HC.deconv_layers.0.weight", "heads.HC.final_layer.weight"]
    assert renamed.shape("heads.HC.final_layer.weight") == (2,)
    assert renamed.unused_rules == ["never_matches"]
    assert parse_rules(["a(?=b)=c"])[0][0].pattern == "a(?=b)"  # split at the last '='


def test_rename_errors_name_the_rule_or_both_tensors():
    with pytest.raises(InputError, match=r"rename rule pattern 'heads\\\.\(' is not a valid regular expression"):
        parse_rules([r"heads\.(=x"])
    with pytest.raises(InputError, match="has no '='"):
        parse_rules(["heads"])
    with pytest.raises(InputError, match="rename rules map both a.weight and b.weight onto b.weight"):
        RenamedSource(_Names({"a.weight": np.zeros(1), "b.weight": np.zeros(1)}), ["^a=b"])


def test_invalid_rename_regex_exits_2(tmp_path, capsys):
    write_safetensors(tmp_path / "model.safetensors", dict(STATE))
    assert main(["inspect", str(tmp_path), "--rename", "back(bone=x"]) == 2
    assert "rename rule pattern 'back(bone' is not a valid regular expression" in capsys.readouterr().err


# -- summaries ------------------------------------------------------------------------------------
def test_tree_collapses_blocks_and_tasks():
    shapes = {f"backbone.blocks.{i}.attn.qkv.weight": (2304, 768) for i in range(12)}
    shapes.update({f"heads.{t}.final_layer.weight": (4, 256, 1, 1) for t in ("AOP", "HC")})
    shapes["heads.FUGC.final_layer.weight"] = (2, 256, 1, 1)
    lines = {(line.pattern, line.shape, line.tensors) for line in tensor_tree(shapes)}
    assert lines == {("backbone.blocks.{0..11}.attn.qkv.weight", (2304, 768), 12),
                     ("heads.{AOP,HC}.final_layer.weight", (4, 256, 1, 1), 2),
                     ("heads.FUGC.final_layer.weight", (2, 256, 1, 1), 1)}


def test_group_apart_uses_the_shortest_distinguishing_prefix():
    unused = {"aux_head.deconv_layers.0.weight": (768, 256, 4, 4), "aux_head.deconv_layers.3.weight": (256, 256, 4, 4)}
    unused.update({f"backbone.blocks.{i}.attn.rel_pos": (3,) for i in range(12)})
    used = [f"backbone.blocks.{i}.attn.qkv.weight" for i in range(12)]
    assert [g.describe() for g in group_apart(unused, used)] == [
        "aux_head.*: 4.2 M parameters, 2 tensors", "backbone.blocks.{0..11}.attn.rel_pos: 36 parameters, 12 tensors"]
    assert (human_count(123_600_000), human_count(786_432), human_count(12)) == ("123.6 M", "786.4 K", "12")


def test_load_ijepa_resizes_a_learned_table_of_a_converted_directory(tmp_path):
    """A converted backbone with a learned position table, continued at another input size:
    the table is resized bicubically (class slot kept aside), with a note."""
    from sonichu_jax.convert import load_ijepa
    from sonichu_jax.convert.shapes import encoder_shapes
    from sonichu_jax.posembed import resize_grid_table

    cfg = tiny_config(pos_embed="learned_cls_folded")
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in encoder_shapes(cfg).items()}
    write_safetensors(tmp_path / "flax_model.safetensors", arrays)
    cfg.save(tmp_path, pretrained_parts=["backbone"])
    weights = load_ijepa(tmp_path, image_size=(96, 96))
    table = arrays["backbone/pos_embed"][0]
    resized = weights.encoder["pos_embed"][0]
    assert weights.cfg.grid == (12, 12) and resized.shape == (145, 64) and weights.predictor is None
    np.testing.assert_array_equal(resized[0], table[0])
    np.testing.assert_allclose(resized[1:], resize_grid_table(table[1:], (8, 8), (12, 12)), atol=1e-6)
    assert any("resized (8, 8) -> (12, 12)" in n for n in weights.notes)
    assert any("no predictor" in n for n in weights.notes)
    np.testing.assert_array_equal(weights.encoder["blocks/1/mlp/fc2/kernel"], arrays["backbone/blocks/1/mlp/fc2/kernel"])


@pytest.mark.parametrize("changes", [
    {}, {"head_sharing": "shared_trunk", "qkv_bias": False}, {"head_kind": "simple", "pos_embed": "learned_cls_folded"},
    {"num_deconv": 3, "mlp_ratio": 2.5, "pos_embed": "learned"},
])
def test_shapes_without_jax_equal_the_flax_modules(changes):
    """The converter plans against shapes computed from the config alone; they must be
    exactly the Flax modules' variables."""
    from flax import nnx

    from sonichu_jax import checkpoint
    from sonichu_jax.convert.shapes import model_shapes, predictor_shapes
    from sonichu_jax.nn.predictor import Predictor

    cfg = tiny_config(**changes)
    assert model_shapes(cfg) == checkpoint.expected_shapes(checkpoint.abstract_model(cfg))
    predictor = nnx.eval_shape(lambda: Predictor(cfg, 32, 2, rngs=nnx.Rngs(0)))
    assert predictor_shapes(cfg, 32, 2) == {f"predictor/{p}": s for p, s in checkpoint.expected_shapes(predictor).items()}


def test_head_count_guess_follows_the_vit_family():
    """Shapes cannot tell the attention heads: width // 64 for ViT-S/B/L, 16 for the ViT-H
    and ViT-g widths of the official I-JEPA releases."""
    from sonichu_jax.convert.infer import Tensors, infer_backbone

    for width, heads in ((384, 6), (768, 12), (1024, 16), (1280, 16), (1408, 16)):
        shapes = {"patch_embed.proj.weight": (width, 3, 14, 14), "blocks.0.mlp.fc1.weight": (4 * width, width)}
        notes: list[str] = []
        fields, _ = infer_backbone(Tensors(shapes, None), patch="patch_embed.proj.weight", pos="pos_embed",
                                   block="blocks.{i}.", fc1="mlp.fc1.weight", qkv_bias="attn.qkv.bias",
                                   class_slot=False, hints={"image_size": 224}, notes=notes)
        assert fields["num_heads"] == heads and "num_heads" in notes[0]


def test_compute_options_are_read_only_from_our_own_config():
    """A publisher's "dtype" is the storage dtype of its weights, not ours to compute in."""

    ours = {**tiny_config().to_dict(), "dtype": "bfloat16"}
    assert read_config_json(ours).fields["dtype"] == "bfloat16"
    foreign = {**ours, "architectures": ["SonichuModel"], "attention": "heads_major"}
    parsed = read_config_json(foreign)
    assert not parsed.ours and parsed.fields["width"] == tiny_config().width
    assert not {"dtype", "attention"} & set(parsed.fields), parsed.fields
