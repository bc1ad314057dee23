"""`SonichuModel.embed` and `sonichu-jax embed`: backbone features against the PyTorch
reference backbone, independence from batch padding, and the feature file round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import random_images, write_reference_checkpoint
from sonichu_jax.cli import main
from sonichu_jax.config import tiny_config
from sonichu_jax.embeddings import load_features, save_features
from sonichu_jax.nn import sonichu
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.preprocess import SonichuPreprocessor

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(torch_ref, tmp_path_factory):
    directory = tmp_path_factory.mktemp("embed-ckpt")
    # smaller than tiny_config: only the encoder is compiled here
    cfg = tiny_config(image_size=(32, 32), width=32, depth=2)
    reference = write_reference_checkpoint(torch_ref, cfg, directory, seed=3)
    return str(directory), reference


def test_embed_equals_the_reference_backbone(checkpoint):
    directory, reference = checkpoint
    model = SonichuModel.from_pretrained(directory)
    images = random_images(3, model.cfg, seed=1)
    with torch.no_grad():  # (B, N, D) final-normed tokens of the PyTorch module
        tokens = reference.backbone(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    gh, gw = model.cfg.grid
    grid = np.asarray(model.embed(images, pool="none"))
    assert grid.shape == (3, gh, gw, model.cfg.width) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, tokens.reshape(3, gh, gw, -1), atol=2e-5)
    np.testing.assert_allclose(np.asarray(model.embed(images)), tokens.mean(axis=1), atol=2e-5)
    with pytest.raises(Exception, match="pool must be one of mean, none"):
        model.embed(images, pool="max")


def test_embed_command_pads_batches_and_keeps_names(checkpoint, tmp_path):
    directory, _ = checkpoint
    rng = np.random.default_rng(4)
    paths = []
    for i, size in enumerate([(64, 64), (80, 120), (50, 40), (64, 64), (90, 70)]):
        path = tmp_path / ("a" if i % 2 else "b") / f"frame{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        paths.append(str(path))
    out = tmp_path / "features.npz"
    compiled = sonichu._jit_embed._cache_size()
    assert main(["embed", *paths, "--model", directory, "--out", str(out), "--batch-size", "4",
                 "--pool", "none", "--quiet"]) == 0
    assert sonichu._jit_embed._cache_size() == compiled + 1  # 5 images, several batches (the last padded), one compilation
    names, features, metadata = load_features(out)
    assert names == paths and metadata["pool"] == "none"
    # each image alone (no padding) gives the same features as in its padded batch
    model, prep = SonichuModel.from_pretrained(directory), SonichuPreprocessor.from_pretrained(directory)
    alone = np.concatenate([np.asarray(model.embed(prep(p)["pixel_values"], "none")) for p in paths])
    assert features.shape == alone.shape == (5, *model.cfg.grid, model.cfg.width)
    np.testing.assert_allclose(features, alone, atol=1e-5)
    with np.load(out) as data:  # plain numpy reads it, without pickle
        assert list(data["names"]) == paths


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_feature_files_round_trip(tmp_path, suffix):
    names = ["a/x.png", "b/x.png", "scan, 3 \u00e9.png"]
    features = np.random.default_rng(5).normal(size=(3, 2, 2, 8)).astype(np.float32)
    path = tmp_path / f"f{suffix}"
    save_features(path, names, features, {"pool": "none", "model": "/models/m"})
    got_names, got, metadata = load_features(path)
    assert got_names == names and metadata == {"pool": "none", "model": "/models/m"}
    np.testing.assert_array_equal(got, features)


def test_embed_unknown_extension_exits_2_before_any_work(tmp_path, capsys):
    # the model does not exist: the output name is checked first
    assert main(["embed", str(tmp_path), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "f.pt")]) == 2
    assert "must end in .safetensors or .npz" in capsys.readouterr().err
    assert not (tmp_path / "f.pt").exists()
