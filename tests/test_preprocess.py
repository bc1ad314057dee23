"""SonichuPreprocessor: every input kind gives the same normalised, resized RGB array."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sonichu_jax.config import tiny_config
from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD, SonichuPreprocessor


@pytest.fixture
def gray8():
    return np.random.default_rng(0).integers(0, 256, size=(37, 53), dtype=np.uint8)


def _expected(gray_float, size):
    """Independent pipeline: resize the [0, 1] gray image, replicate, normalise by hand."""
    resized = cv2.resize(gray_float.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    rgb = np.stack([resized] * 3, axis=-1)
    return (rgb - IMAGENET_MEAN.reshape(1, 1, 3)) / IMAGENET_STD.reshape(1, 1, 3)


@pytest.mark.parametrize("kind", ["gray", "gray1", "rgb", "rgba", "uint16", "float"])
def test_input_kinds_agree(kind, gray8):
    prep = SonichuPreprocessor(size=(32, 24))
    base = gray8.astype(np.float32) / 255.0
    image = {
        "gray": gray8,
        "gray1": gray8[..., None],
        "rgb": np.repeat(gray8[..., None], 3, axis=2),
        "rgba": np.concatenate([np.repeat(gray8[..., None], 3, axis=2), np.full(gray8.shape + (1,), 7, np.uint8)], 2),
        "uint16": gray8.astype(np.uint16) * 257,  # 255 * 257 = 65535: same intensities
        "float": base,
    }[kind]
    out = prep(image)
    assert out["pixel_values"].shape == (1, 32, 24, 3)
    assert out["pixel_values"].dtype == np.float32
    assert (out["orig_h"], out["orig_w"]) == (37, 53)
    np.testing.assert_allclose(out["pixel_values"][0], _expected(base, (32, 24)), atol=1e-5)


def test_channel_order_is_rgb_from_files(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = SonichuPreprocessor(size=(8, 8))(str(path))["pixel_values"][0]
    np.testing.assert_allclose(out[0, 0], (np.array([200, 0, 0]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-6)


def test_sixteen_bit_png(tmp_path):
    img = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), img)
    out = SonichuPreprocessor(size=(8, 8))(str(path))["pixel_values"][0]
    np.testing.assert_allclose(out[..., 0], (img / 65535.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], atol=1e-5)


def test_list_input_gives_batch_and_sizes(gray8):
    out = SonichuPreprocessor(size=(16, 16))([gray8, gray8[:20, :10]])
    assert out["pixel_values"].shape == (2, 16, 16, 3)
    assert out["orig_h"] == [37, 20] and out["orig_w"] == [53, 10]


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4), np.int64), "dtype"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        ("/no/such/file.png", "not found"),
        (np.zeros((0, 5), np.uint8), "no pixels"),
    ],
)
def test_bad_inputs_are_named(image, message):
    with pytest.raises(InputError, match=message):
        SonichuPreprocessor()(image)


def test_undecodable_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        SonichuPreprocessor()(str(path))


def test_config_file_round_trip(tmp_path):
    prep = SonichuPreprocessor(size=(64, 48), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    prep.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 48}
    assert SonichuPreprocessor.from_pretrained(tmp_path) == prep


def test_defaults_without_config(tmp_path):
    assert SonichuPreprocessor.from_pretrained(tmp_path) == SonichuPreprocessor()


def _config_file(tmp_path, data, model=False):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(data))
    if model:
        tiny_config().save(tmp_path)  # 64x64 images, 8x8 patches of 8 px
    return tmp_path


@pytest.mark.parametrize(
    "data, model, message",
    [
        ({"size": {"height": "big", "width": 256}}, False, "size.height must be a positive integer, got 'big'"),
        ({"size": [0, 0]}, False, r"size\[0\] must be a positive integer, got 0"),
        ({"size": {"shortest_edge": 256}}, False, "size must have the keys height and width"),
        ({"size": True}, False, "size must be a positive integer, got True"),
        ({"image_mean": [0.5, 0.5]}, False, "image_mean must be three finite numbers"),
        ({"image_std": [0.2, 0.0, 0.2]}, False, "image_std must be three positive finite numbers"),
        ({"interpolation": 3}, False, "unknown interpolation 3"),
        ({"size": {"height": 60, "width": 60}}, True, "size 60x60 does not fit the model, which takes 64x64 images"),
        ({"size": 128}, True, "size 128x128 does not fit the model"),
    ],
)
def test_bad_config_values_are_named(tmp_path, data, model, message):
    _config_file(tmp_path, data, model)
    with pytest.raises(ConfigError, match=message) as info:
        SonichuPreprocessor.from_pretrained(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "preprocessor_config.json"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["[256, 256]", "{not json", b"\xff\xfe\x00"])
def test_unreadable_config_file(tmp_path, content):
    path = tmp_path / "preprocessor_config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match="preprocessor_config.json"):
        SonichuPreprocessor.from_pretrained(tmp_path)


def test_size_comes_from_the_model_config(tmp_path):
    tiny_config().save(tmp_path)
    assert SonichuPreprocessor.from_pretrained(tmp_path).size == (64, 64)
    _config_file(tmp_path, {"size": {"height": 64, "width": 64}, "image_mean": [0.5, 0.5, 0.5]})
    assert SonichuPreprocessor.from_pretrained(tmp_path).mean == (0.5, 0.5, 0.5)


def test_model_config_given_or_foreign(tmp_path):
    """A config passed by the caller wins; another project's config.json is not ours to
    check (the model loader reads it)."""
    _config_file(tmp_path, {"size": {"height": 256, "width": 192}})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vitpose", "backbone_config": {}}))
    assert SonichuPreprocessor.from_pretrained(tmp_path).size == (256, 192)
    with pytest.raises(ConfigError, match="size 256x192 does not fit the model, which takes 64x64"):
        SonichuPreprocessor.from_pretrained(tmp_path, model_config=tiny_config())
    assert SonichuPreprocessor.from_pretrained(tmp_path / "nothing", model_config=tiny_config()).size == (64, 64)


def test_bad_config_is_one_line_from_the_cli(tmp_path, capsys):
    """`predict` with a checkpoint whose preprocessor_config.json has a wrong value type:
    exit 2 and one line naming the key and the value, no traceback."""
    from sonichu_jax.checkpoint import abstract_model, expected_shapes, model_from_arrays, save_flax
    from sonichu_jax.cli import main

    cfg = tiny_config()  # zero weights: the model never runs, and nothing is compiled
    shapes = expected_shapes(abstract_model(cfg))
    save_flax(model_from_arrays(cfg, {k: np.zeros(s, np.float32) for k, s in shapes.items()}), tmp_path / "model")
    _config_file(tmp_path / "model", {"size": {"height": "big", "width": 64}})
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((20, 30), np.uint8))
    assert main(["predict", str(image), "--task", "HC", "--model", str(tmp_path / "model"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size.height" in err[0] and "'big'" in err[0], err
