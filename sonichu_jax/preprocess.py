"""Image preprocessing: any B-mode frame in, a normalised model-sized RGB array out.

A plain resize (no letterbox) keeps the model's normalised output frame identical to the
original image's frame, so pixel coordinates are ``xy * (orig_w, orig_h)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from sonichu_jax.errors import InputError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file unchanged (8 or 16 bit, gray or colour) as RGB(A) channel order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot decode image: {path}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
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


@dataclass(frozen=True)
class SonichuPreprocessor:
    """Resize to the model size and apply ImageNet normalisation, channels-last."""

    size: tuple[int, int] = (256, 256)  # (height, width)
    mean: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_MEAN)
    std: tuple[float, float, float] = tuple(float(v) for v in IMAGENET_STD)
    interpolation: str = "linear"

    _INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.interpolation not in self._INTERPOLATIONS:
            raise InputError(
                f"unknown interpolation {self.interpolation!r}; use one of {sorted(self._INTERPOLATIONS)}"
            )

    def preprocess_one(self, image: np.ndarray | str | os.PathLike) -> tuple[np.ndarray, int, int]:
        """One image -> ((H, W, 3) float32 normalised, orig_h, orig_w)."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        rgb = to_float_rgb(image)
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
        outs = [self.preprocess_one(im) for im in batch]
        pixel_values = np.stack([o[0] for o in outs])
        orig_h = [o[1] for o in outs]
        orig_w = [o[2] for o in outs]
        if single:
            return {"pixel_values": pixel_values, "orig_h": orig_h[0], "orig_w": orig_w[0]}
        return {"pixel_values": pixel_values, "orig_h": orig_h, "orig_w": orig_w}

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = {"height": self.size[0], "width": self.size[1]}
        data["image_mean"] = list(data.pop("mean"))
        data["image_std"] = list(data.pop("std"))
        return data

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from sonichu_jax.fileio import write_json

        write_json(os.path.join(directory, PREPROCESSOR_CONFIG_NAME), self.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "SonichuPreprocessor":
        """Read ``preprocessor_config.json`` (HF-style keys accepted); defaults when absent,
        with the size taken from the model's ``config.json`` if there is one."""
        path = os.path.join(directory, PREPROCESSOR_CONFIG_NAME)
        kwargs: dict[str, Any] = {}
        if os.path.isfile(path):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} is not valid JSON: {exc}") from None
            size = data.get("size")
            if isinstance(size, dict):
                kwargs["size"] = (int(size["height"]), int(size["width"]))
            elif isinstance(size, (list, tuple)):
                kwargs["size"] = tuple(size)
            elif isinstance(size, int):
                kwargs["size"] = (size, size)
            if "image_mean" in data:
                kwargs["mean"] = tuple(float(v) for v in data["image_mean"])
            if "image_std" in data:
                kwargs["std"] = tuple(float(v) for v in data["image_std"])
            if "interpolation" in data:
                kwargs["interpolation"] = data["interpolation"]
        elif os.path.isfile(os.path.join(directory, "config.json")):
            from sonichu_jax.config import ModelConfig

            kwargs["size"] = ModelConfig.load(directory).image_size
        return cls(**kwargs)
