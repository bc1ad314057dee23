"""Image preprocessing: any B-mode frame in, a normalised model-sized RGB array out.

A plain resize (no letterbox) keeps the model's normalised output frame identical to the
original image's frame, so pixel coordinates are ``xy * (orig_w, orig_h)``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from sonichu_jax.config import CONFIG_NAME, PREPROCESSOR_CONFIG_NAME, ModelConfig
from sonichu_jax.convert.files import local_path
from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.fileio import read_json, write_json

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# The file types searched for in folders of frames (prediction inputs, I-JEPA frames).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def find_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Every file below ``root`` ending in one of ``extensions`` (case-insensitive),
    recursively, in a fixed order: each folder's files sorted by name, then its
    subfolders sorted by name."""
    exts = tuple(e.lower() for e in extensions)
    paths = []
    for dirpath, dirnames, filenames in os.walk(os.fspath(root)):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(exts))
    return paths


def load_image(image) -> np.ndarray:
    """A record's image as an array: arrays as they are, paths decoded, packed frames
    (`sonichu_jax.data.shards.PackedImage`) read."""
    if isinstance(image, np.ndarray):
        return image
    return read_image(image) if isinstance(image, (str, os.PathLike)) else image.read()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file unchanged (8 or 16 bit, gray or colour) as RGB(A) channel order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    try:
        return decode_image(np.fromfile(path, np.uint8), path)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None


def decode_image(data: bytes | np.ndarray, what: str) -> np.ndarray:
    """Encoded image bytes -> the array `read_image` gives; InputError naming ``what``."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot decode image: {what}")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return image


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) in uint8, uint16 or float -> float32 (H, W, 3) in [0, 1].

    Floats are taken to be in [0, 1] already; alpha is dropped; one channel is replicated.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image has no pixels (shape {image.shape})")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise InputError("image contains NaN or infinite values")
        return image.astype(np.float32)
    raise InputError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float")


def normalize(image: np.ndarray, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD) -> np.ndarray:
    return ((image - mean) / std).astype(np.float32)


def _positive_int(value: Any, key: str) -> int:
    if (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and float(value).is_integer()
        and value > 0
    ):
        return int(value)
    raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _size(value: Any, key: str) -> tuple[int, int]:
    """``{"height": h, "width": w}``, ``[h, w]`` or one integer for a square -> (h, w)."""
    if isinstance(value, dict):
        if set(value) != {"height", "width"}:
            raise ConfigError(f"{key} must have the keys height and width, got {value!r}")
        return _positive_int(value["height"], f"{key}.height"), _positive_int(value["width"], f"{key}.width")
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"{key} must be [height, width], got {value!r}")
        return _positive_int(value[0], f"{key}[0]"), _positive_int(value[1], f"{key}[1]")
    side = _positive_int(value, key)
    return side, side


def _channel_values(value: Any, key: str, positive: bool = False) -> tuple[float, float, float]:
    if (
        isinstance(value, (list, tuple, np.ndarray))
        and len(value) == 3
        and all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in value)
        and all(np.isfinite(v) and (v > 0 or not positive) for v in value)
    ):
        return tuple(float(v) for v in value)
    kind = "positive finite numbers" if positive else "finite numbers"
    raise ConfigError(f"{key} must be three {kind} (R, G, B), got {value!r}")


@dataclass(frozen=True)
class SonichuPreprocessor:
    """Resize to the model size and apply ImageNet normalisation, channels-last."""

    size: tuple[int, int] = (256, 256)  # (height, width)
    mean: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_MEAN)
    std: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_STD)
    interpolation: str = "linear"

    _INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}

    def __post_init__(self):
        object.__setattr__(self, "size", _size(self.size, "size"))
        object.__setattr__(self, "mean", _channel_values(self.mean, "mean"))
        object.__setattr__(self, "std", _channel_values(self.std, "std", positive=True))
        if not isinstance(self.interpolation, str) or self.interpolation not in self._INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}; use one of {sorted(self._INTERPOLATIONS)}"
            )

    def check_fits(self, cfg: ModelConfig) -> None:
        """Raise `ConfigError` unless this size is the one the model's patch grid and
        position table were built for."""
        if self.size != tuple(cfg.image_size):
            (height, width), (gh, gw) = cfg.image_size, cfg.grid
            raise ConfigError(
                f"size {self.size[0]}x{self.size[1]} does not fit the model, which takes "
                f"{height}x{width} images ({gh}x{gw} patches of {cfg.patch_size} px)"
            )

    def preprocess_one(self, image: np.ndarray | str | os.PathLike) -> tuple[np.ndarray, int, int]:
        """One image -> ((H, W, 3) float32 normalised, orig_h, orig_w)."""
        rgb = to_float_rgb(load_image(image))
        orig_h, orig_w = rgb.shape[:2]
        height, width = self.size
        if (orig_h, orig_w) != (height, width):
            rgb = cv2.resize(rgb, (width, height), interpolation=self._INTERPOLATIONS[self.interpolation])
        return normalize(rgb, np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)), orig_h, orig_w

    def __call__(self, images: Any) -> dict[str, Any]:
        """A path, an array, or a list of them -> ``pixel_values`` (B, H, W, 3) float32,
        ``orig_h``/``orig_w`` (ints for one image, lists for a list)."""
        single = not isinstance(images, (list, tuple))
        batch: Sequence[Any] = [images] if single else images
        if not batch:
            raise InputError("no images given")
        arrays, orig_h, orig_w = zip(*(self.preprocess_one(im) for im in batch))
        sizes = (lambda v: v[0]) if single else list
        return {"pixel_values": np.stack(arrays), "orig_h": sizes(orig_h), "orig_w": sizes(orig_w)}

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = {"height": self.size[0], "width": self.size[1]}
        data["image_mean"] = list(data.pop("mean"))
        data["image_std"] = list(data.pop("std"))
        return data

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        write_json(os.path.join(directory, PREPROCESSOR_CONFIG_NAME), self.to_dict())

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, model_config: ModelConfig | None = None
    ) -> "SonichuPreprocessor":
        """Read ``preprocessor_config.json`` (HF-style keys accepted, others ignored) from a
        checkpoint directory, the directory of a weights file, or a Hub name; defaults when
        it is absent. The model's config (``model_config``, else the Sonichu
        ``config.json`` in the same directory, if there is one) gives the size when none is
        set, and a size that differs from the model's is refused."""
        directory = local_path(directory)
        if os.path.isfile(directory):
            directory = os.path.dirname(os.path.abspath(directory))
        path = os.path.join(directory, PREPROCESSOR_CONFIG_NAME)
        cfg = model_config or _model_config_beside(directory)
        try:  # a value is named as in the file (the constructor checks the size under its own name)
            kwargs = _read_config(path) if os.path.lexists(path) else {}
            if cfg is not None and "size" not in kwargs:
                kwargs["size"] = cfg.image_size
            prep = cls(**kwargs)
            if cfg is not None:
                prep.check_fits(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return prep


def _model_config_beside(directory: str | os.PathLike) -> ModelConfig | None:
    """The Sonichu ``config.json`` in ``directory``; None when there is none or it is
    another project's (a transformers config, say), which the model loader interprets."""
    try:
        return ModelConfig.load(directory) if os.path.isfile(os.path.join(directory, CONFIG_NAME)) else None
    except (ConfigError, InputError):
        return None


def _read_config(path: str) -> dict[str, Any]:
    """``preprocessor_config.json`` -> constructor arguments, each value checked."""
    data = read_json(path)
    keys = {"size": "size", "image_mean": "mean", "image_std": "std", "interpolation": "interpolation"}
    kwargs = {arg: data[key] for key, arg in keys.items() if key in data}
    if "mean" in kwargs:
        kwargs["mean"] = _channel_values(kwargs["mean"], "image_mean")
    if "std" in kwargs:
        kwargs["std"] = _channel_values(kwargs["std"], "image_std", positive=True)
    return kwargs
