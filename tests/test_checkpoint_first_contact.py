"""Checkpoints shaped the way publishers ship them, loaded on first contact and compared
with their PyTorch source: a Sonichu directory with a Hugging Face style config.json, one
with an unknown 4.2 M-parameter head, an official I-JEPA training checkpoint (converted,
then opened; and its three networks), new heads asked for, rename rules from the docs, the
Hub cache, and inspect. (An mmpose ViTPose .pth made from transformers' VitPose is in
test_convert_hf_vitpose.py, beside the other transformers tests.)"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import torch_refs  # noqa: E402
from conftest import random_images, write_reference_checkpoint  # noqa: E402
from sonichu_jax import checkpoint  # noqa: E402
from sonichu_jax.cli import main  # noqa: E402
from sonichu_jax.config import CARD_TASKS, card_config, tiny_config  # noqa: E402
from sonichu_jax.convert import ConversionError, load_ijepa, open_checkpoint  # noqa: E402
from sonichu_jax.errors import InputError  # noqa: E402
from sonichu_jax.nn.sonichu import SonichuModel  # noqa: E402
from sonichu_jax.posembed import sincos_2d  # noqa: E402
from sonichu_jax.reference import ijepa as ijepa_ref  # noqa: E402

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "checkpoints.md")
LOGGER = "sonichu_jax.checkpoint"


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def assert_parity(model: SonichuModel, task: str, torch_heatmaps, x, beta: float = 1.0):
    """Heatmaps (relative L2 <= 1e-5) and soft-argmax coordinates (<= 2e-5) against the
    PyTorch source's NCHW heatmaps; the coordinates come from this project's predict."""
    from sonichu_jax.reference.modeling_sonichu import soft_argmax

    with torch.no_grad():
        theirs = torch_heatmaps(nchw(x))
    assert torch_refs.peak_softmax(theirs) > 0.1, "heatmaps too flat to test anything"
    assert rel_l2(model.heatmaps(x, task), theirs.permute(0, 2, 3, 1).numpy()) <= 1e-5
    coords = np.asarray(model.predict(x, task, tta=False))
    assert np.abs(coords - soft_argmax(theirs, beta).numpy()).max() <= 2e-5


@pytest.fixture(scope="module")
def sonichu_src(torch_ref, tmp_path_factory):
    """A reference Sonichu checkpoint (tiny, the card's nine tasks) and its torch model."""
    directory = tmp_path_factory.mktemp("sonichu")
    model = write_reference_checkpoint(torch_ref, tiny_config(), directory, seed=11)
    return directory, model


def _copy(src, dst, tensors=None, config=None):
    os.makedirs(dst, exist_ok=True)
    if tensors is None:
        shutil.copy(os.path.join(src, "model.safetensors"), dst)
    else:
        save_file(tensors, os.path.join(dst, "model.safetensors"))
    if config is None:
        shutil.copy(os.path.join(src, "config.json"), dst)
    else:
        with open(os.path.join(dst, "config.json"), "w") as fh:
            json.dump(config, fh)
    return dst


HF_STYLE = {
    "architectures": ["SonichuForKeypointDetection"],
    "auto_map": {"AutoModel": "modeling_sonichu.SonichuModel"},
    "model_type": "sonichu",
    "torch_dtype": "float32",
    "transformers_version": "4.46.0",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 64,
    "patch_size": 8,
    "keypoints": {t.name: t.num_keypoints for t in CARD_TASKS},
}


def test_sonichu_directory_with_hugging_face_config(sonichu_src, tmp_path):
    src, ref = sonichu_src
    directory = _copy(src, tmp_path / "hf", config=HF_STYLE)
    report = []
    model = SonichuModel.from_pretrained(directory, report=report)
    assert model.cfg == tiny_config()  # positions, eps, padding: from the tensors and the family's values

    context = "\n".join(report[0].context)
    assert "config.json keys not ours, ignored: architectures, auto_map, torch_dtype, transformers_version" in context
    assert "from config.json: depth, image_size, num_heads, patch_size, width, keypoints" in context
    x = random_images(2, model.cfg)
    assert_parity(model, "FA", lambda t: ref.heatmaps(t, "FA"), x)
    # a keypoint table that disagrees with the head tensors is named
    wrong = dict(HF_STYLE, keypoints={**HF_STYLE["keypoints"], "HC": 5, "NEW": 2})
    with pytest.raises(InputError, match="HC has 5 keypoints in config.json, 4 in its head tensors; NEW is in config.json"):
        SonichuModel.from_pretrained(_copy(src, tmp_path / "wrong", config=wrong))


def aux_head(seed: int = 0) -> dict:
    """A classic ViTPose head at the card's width that no layout knows: 4.2 M parameters."""
    gen = torch.Generator().manual_seed(seed)
    out = {"aux_head.deconv_layers.0.weight": torch.randn(768, 256, 4, 4, generator=gen),
           "aux_head.deconv_layers.3.weight": torch.randn(256, 256, 4, 4, generator=gen),
           "aux_head.final_layer.weight": torch.randn(4, 256, 1, 1, generator=gen),
           "aux_head.final_layer.bias": torch.zeros(4)}
    for j in (1, 4):
        out.update({f"aux_head.deconv_layers.{j}.{p}": torch.ones(256) for p in ("weight", "bias", "running_mean",
                                                                                  "running_var")})
        out[f"aux_head.deconv_layers.{j}.num_batches_tracked"] = torch.tensor(5)
    return out


def test_unknown_head_is_reported_by_default_and_refused_strictly(sonichu_src, tmp_path, caplog):
    src, ref = sonichu_src
    tensors = {**load_file(os.path.join(src, "model.safetensors")), **aux_head()}
    directory = _copy(src, tmp_path / "aux", tensors=tensors)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = SonichuModel.from_pretrained(directory)
    assert ("12 tensors of the checkpoint are not used by the model (4.2 M parameters):\n"
            "    aux_head.*: 4.2 M parameters, 12 tensors") in caplog.text
    assert_parity(model, "FA", lambda t: ref.heatmaps(t, "FA"), random_images(2, model.cfg))
    with pytest.raises(ConversionError, match=r"aux_head\.\*: 4\.2 M parameters, 12 tensors"):
        SonichuModel.from_pretrained(directory, strict=True)
    # convert says the same and writes the model without it; --strict refuses
    assert main(["convert", str(directory), "--out", str(tmp_path / "flax")]) == 0
    assert main(["convert", str(directory), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert not (tmp_path / "strict").exists()


def test_new_heads_asked_for_and_others_left_out(sonichu_src, caplog):
    src, _ = sonichu_src
    base = checkpoint.flat_state(SonichuModel.from_pretrained(src))
    report = []
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = SonichuModel.from_pretrained(src, tasks={"FA": 4, "NEW": 3}, report=report)
    assert model.cfg.task_names == ("FA", "NEW") and report[0].new_heads == ["NEW"]
    assert "1 head newly initialised: NEW" in caplog.text and "heads.AOP.*" in caplog.text
    loaded = checkpoint.flat_state(model)
    for path in ("heads/FA/final/kernel", "backbone/blocks/1/mlp/fc2/kernel"):
        np.testing.assert_array_equal(loaded[path], base[path])
    kernel = loaded["heads/NEW/trunk/deconvs/0/kernel"]
    assert abs(kernel.std() * np.sqrt(4 * 4 * 64) - 1) < 0.1  # LeCun normal, fan-in 4 * 4 * 64
    with pytest.raises(ConversionError, match="1 head newly initialised: NEW"):
        SonichuModel.from_pretrained(src, tasks={"FA": 4, "NEW": 3}, strict=True)
    with pytest.raises(InputError, match="task 'NEW': its keypoint count is unknown"):
        SonichuModel.from_pretrained(src, tasks=["FA", "NEW"])


def _documented_rename_rules() -> list[str]:
    text = open(DOCS).read()
    block = text[text.index("<!-- rename-example -->"):]
    block = block[: block.index("```", block.index("```") + 3)]
    return re.findall(r"--rename '([^']+)'", block)


def test_rename_rules_from_the_docs_adapt_a_made_up_head_naming(sonichu_src, tmp_path, caplog):
    src, _ = sonichu_src
    theirs = {}
    for name, tensor in load_file(os.path.join(src, "model.safetensors")).items():
        name = re.sub(r"^heads\.(\w+)\.deconv_layers\.([0134])\.",
                      lambda m: f"decoders.{m[1]}.{({'0': 'up.0', '1': 'bn.0', '3': 'up.1', '4': 'bn.1'})[m[2]]}.", name)
        theirs[re.sub(r"^heads\.(\w+)\.final_layer\.", r"decoders.\1.out.", name)] = tensor
    directory = _copy(src, tmp_path / "made_up", tensors=theirs)
    with caplog.at_level(logging.WARNING, logger=LOGGER):  # without rules: explained, heads fresh
        SonichuModel.from_pretrained(directory)
    assert "decoders.*" in caplog.text and "9 heads newly initialised" in caplog.text
    rules = _documented_rename_rules()
    assert len(rules) == 5
    model = SonichuModel.from_pretrained(directory, rename=rules, strict=True)
    expected = checkpoint.flat_state(SonichuModel.from_pretrained(src))
    for path, value in checkpoint.flat_state(model).items():
        np.testing.assert_array_equal(value, expected[path], err_msg=path)
    args = [arg for rule in rules for arg in ("--rename", rule)]
    assert main(["inspect", str(directory), *args]) == 0


# -- I-JEPA: the official training checkpoint ------------------------------------------------------
IJEPA_CFG = dict(image_size=[64, 64], patch_size=16, width=128, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def ijepa_src(tmp_path_factory):
    tcfg = torch_refs.torch_cfg(**IJEPA_CFG)
    encoder = torch_refs.randomize(ijepa_ref.Encoder(tcfg), seed=1)
    target = torch_refs.randomize(ijepa_ref.Encoder(tcfg), seed=2)
    predictor = torch_refs.randomize(ijepa_ref.Predictor((4, 4), 128, 64, depth=1, num_heads=2), seed=3)
    path = tmp_path_factory.mktemp("ijepa") / "jepa-latest.pth.tar"
    torch.save(ijepa_ref.training_checkpoint(encoder, predictor, target, epoch=12), path)
    return path, encoder, target, predictor


def test_ijepa_checkpoint_converted_then_opened(ijepa_src, tmp_path, caplog, capsys):
    path, _, target, _ = ijepa_src
    out = tmp_path / "converted"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_parts"] == ["backbone", "predictor"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = SonichuModel.from_pretrained(out)
    assert "9 heads newly initialised: AOP, FUGC, FA, HC, IVC, PLAX, PSAX, A4C, fetal_femur" in caplog.text
    x = random_images(2, model.cfg)
    graphdef, state = nnx.split(model)
    features = jax.jit(lambda s, x: nnx.merge(graphdef, s).backbone(x))(state, x)
    with torch.no_grad():
        assert rel_l2(features, target(nchw(x)).numpy()) <= 1e-5
    # the .pth.tar itself opens the same way
    direct = checkpoint.flat_state(SonichuModel.from_pretrained(path))
    for key, value in checkpoint.flat_state(model).items():
        if key.startswith("backbone/"):
            np.testing.assert_array_equal(direct[key], value, err_msg=key)
    capsys.readouterr()
    assert main(["parity", str(out), "--tasks", "HC", "--batch-size", "1"]) == 0
    assert "exported to the sonichu layout" in capsys.readouterr().out


def test_load_ijepa_three_networks_and_predictor_parity(ijepa_src, tmp_path):
    path, encoder, target, predictor = ijepa_src
    weights = load_ijepa(path)
    assert (weights.predictor_width, weights.predictor_depth, weights.cfg.num_heads) == (64, 1, 2)
    for arrays, module in ((weights.encoder, encoder), (weights.target_encoder, target)):
        np.testing.assert_array_equal(arrays["blocks/0/attn/qkv/kernel"],
                                      module.state_dict()["blocks.0.attn.qkv.weight"].numpy().T)
    assert torch_refs.predictor_parity(weights.cfg, 64, 1, weights.predictor, predictor) <= 1e-5
    # another grid: fixed sin-cos tables recomputed (encoder and predictor), with notes
    wide = load_ijepa(path, image_size=(96, 96))
    assert wide.cfg.grid == (6, 6)
    np.testing.assert_allclose(wide.predictor["pos_embed"][0], sincos_2d(64, (6, 6)), atol=1e-6)
    np.testing.assert_allclose(wide.target_encoder["pos_embed"][0], sincos_2d(128, (6, 6)), atol=1e-6)
    assert any("fixed sin-cos table recomputed for grid (6, 6) (was (4, 4))" in n for n in wide.notes)
    # a converted directory: its one encoder starts both
    assert main(["convert", str(path), "--out", str(tmp_path / "c")]) == 0
    converted = load_ijepa(tmp_path / "c")
    np.testing.assert_array_equal(converted.encoder["blocks/0/mlp/fc1/kernel"],
                                  weights.target_encoder["blocks/0/mlp/fc1/kernel"])
    np.testing.assert_array_equal(converted.predictor["embed/kernel"], weights.predictor["embed/kernel"])
    assert any("one encoder" in n for n in converted.notes)


# -- inputs and names nobody expected ----------------------------------------------------------------
def test_channels_first_input_says_how_to_transpose(sonichu_src):
    model = SonichuModel.from_pretrained(sonichu_src[0])
    x = random_images(1, model.cfg).transpose(0, 3, 1, 2)
    for call in (model.heatmaps, model.predict):
        with pytest.raises(InputError, match=r"channels-first .*x\.transpose\(0, 2, 3, 1\)"):
            call(x, "FA")


def test_checkpoint_that_matches_nothing_is_summarised(tmp_path, capsys):
    tensors = {f"enc.layers.{i}.w": torch.zeros(8, 8) for i in range(30)}
    tensors.update({"dec.head.w": torch.zeros(4, 8), "dec.head.b": torch.zeros(4)})
    save_file(tensors, str(tmp_path / "weird.safetensors"))
    assert main(["convert", str(tmp_path / "weird.safetensors"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ("It holds 32 tensors (2.0 K parameters): dec.*: 36 parameters, 2 tensors; enc.*: 1.9 K parameters, "
            "30 tensors. No layout knows any of these names.") in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    # a near miss names the nearest layout and a few of the names it does not know
    tensors = load_file(os.path.join(write_near_miss(tmp_path), "model.safetensors"))
    save_file({k.replace("backbone.", "encoder_"): v for k, v in tensors.items()}, str(tmp_path / "near.safetensors"))
    assert main(["convert", str(tmp_path / "near.safetensors"), "--out", str(tmp_path / "out")]) == 2
    assert "Nearest layout: sonichu (" in capsys.readouterr().err


def write_near_miss(tmp_path):
    cfg = tiny_config(depth=1, tasks=CARD_TASKS[:1])
    directory = tmp_path / "near"
    from conftest import load_reference

    load_reference().SonichuModel(cfg.to_dict()).save_pretrained(str(directory))
    return directory


# -- the Hugging Face Hub (offline, from a cache laid out as huggingface_hub writes it) ---------------
def test_hub_name_loads_from_the_cache_offline(sonichu_src, tmp_path):
    pytest.importorskip("huggingface_hub")
    src, _ = sonichu_src
    snapshot = tmp_path / "hub" / "models--owner--sonichu-tiny" / "snapshots" / "0123abcd"
    _copy(src, snapshot)
    (tmp_path / "hub" / "models--owner--sonichu-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--sonichu-tiny" / "refs" / "main").write_text("0123abcd")
    # from_pretrained opens every path through open_checkpoint: run that (no JAX) in a process
    # whose huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE at import
    code = ("import numpy as np; from sonichu_jax.convert import open_checkpoint; "
            "c = open_checkpoint('owner/sonichu-tiny'); print(c.weights); print(sorted(c.config['tasks'])); "
            "np.save('out.npy', c.source.get('backbone.blocks.0.attn.qkv.weight')); "
            "from sonichu_jax.preprocess import SonichuPreprocessor; "
            "print(list(SonichuPreprocessor.from_pretrained('owner/sonichu-tiny').size), c.config['image_size']); "
            "open_checkpoint('owner/not-cached')")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.splitlines()[0] == str(snapshot / "model.safetensors")
    size, expected_size = out.stdout.splitlines()[2].split("] [")
    assert size + "]" == "[" + expected_size  # the preprocessor is found through the Hub name too
    assert "owner/not-cached not found locally, and the Hugging Face Hub cache (offline) holds none of" in out.stderr
    expected = load_file(os.path.join(src, "model.safetensors"))["backbone.blocks.0.attn.qkv.weight"].numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_hub_name_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(InputError, match=r"needs huggingface_hub: pip install 'sonichu-jax\[hub\]'"):
        open_checkpoint("owner/not-a-local-path")


# -- inspect -----------------------------------------------------------------------------------------
def test_inspect_reads_headers_only(sonichu_src, tmp_path, capsys, monkeypatch):
    from sonichu_jax.convert import SafetensorsSource

    src, _ = sonichu_src
    directory = _copy(src, tmp_path / "aux", tensors={**load_file(os.path.join(src, "model.safetensors")),
                                                      **aux_head()}, config=HF_STYLE)
    monkeypatch.setattr(SafetensorsSource, "get", lambda self, name: pytest.fail(f"read tensor data: {name}"))
    assert main(["inspect", str(directory), "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    for expected in ("backbone.blocks.{0,1}.attn.qkv.weight", "(192, 64)", "layout: sonichu",
                     "tasks: AOP (4), FUGC (2), FA (4), HC (4), IVC (2), PLAX (22), PSAX (4), A4C (16), fetal_femur (2)",
                     "aux_head.*: 4.2 M parameters, 12 tensors", "result: loads (not with strict=True)",
                     "aux_head.*      4.2 M parameters, 14 tensors"):
        assert expected in out, expected
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["layout"] == "sonichu" and info["loads"] and not info["loads_strict"]
    assert info["tensors"] == len(load_file(os.path.join(directory, "model.safetensors")))


def card_sized_checkpoint(directory, ref) -> None:
    """The card's architecture in the sonichu layout plus a 4.2 M-parameter unknown head
    (about the 511 MB the model card quotes), header and shapes only: a sparse file."""
    from sonichu_jax.convert import SafetensorsWriter

    with torch.device("meta"):
        state = ref.SonichuModel(card_config().to_dict()).state_dict()
    specs = {k: (tuple(v.shape), np.int64 if v.dtype == torch.int64 else np.float32) for k, v in state.items()}
    specs.update({k: (tuple(v.shape), np.int64 if v.dtype == torch.int64 else np.float32) for k, v in aux_head().items()})
    os.makedirs(directory, exist_ok=True)
    SafetensorsWriter(os.path.join(directory, "model.safetensors"), specs).close(complete=False)
    card_config().save(directory)


def test_inspect_card_sized_checkpoint_without_jax(torch_ref, tmp_path):
    card_sized_checkpoint(tmp_path / "card", torch_ref)
    assert os.path.getsize(tmp_path / "card" / "model.safetensors") > 500e6
    code = ("import sys, time; t = time.perf_counter(); from sonichu_jax.cli import main; "
            f"rc = main(['inspect', {str(tmp_path / 'card')!r}, '--json', '-']); "
            "print('SECONDS', time.perf_counter() - t, 'JAX', 'jax' in sys.modules, 'RC', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    info = json.loads(out[: out.index("SECONDS")])
    assert info["parameters"] == 127_823_188 and info["mapping"]["not_used"][0]["key"] == "aux_head.*"
    seconds, *rest = out.split("SECONDS")[1].split()
    assert rest[1:] == ["False", "RC", "0"]
    assert float(seconds) < 30, seconds  # README promises < 5 s here; CI machines are slower and shared
