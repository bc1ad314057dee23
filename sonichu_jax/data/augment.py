"""Keypoint-aware augmentation: one affine map moves the image and its keypoints together
(continuous pixel frame, `data.records`), then photometric changes; every draw comes
from the generator passed in (docs/training.md, "Input batches")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation parameters. Ranges are (low, high), sampled uniformly; probabilities
    are per sample."""

    scale: tuple[float, float] = (0.85, 1.15)
    rotation_deg: float = 15.0  # rotation in [-rotation_deg, rotation_deg]
    translate: float = 0.08  # shift up to this fraction of the output size, per axis
    flip_prob: float = 0.5  # only for tasks with a flip permutation
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.08  # additive, in [0, 1] intensity units
    noise_prob: float = 0.5
    noise_std: float = 0.12  # std of the multiplicative noise factor around 1
    blur_prob: float = 0.25
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # in output pixels


def random_affine(
    rng: np.random.Generator,
    config: AugmentConfig,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    can_flip: bool,
) -> tuple[np.ndarray, bool]:
    """A random 2x3 continuous-frame map from the input image to the output image, and
    whether it flips. Sizes are (width, height).

    p_out = c_out + shift + Flip Rot(angle) scale Resize (p_in - c_in)
    """
    (w, h), (W, H) = in_size, out_size
    scale = rng.uniform(*config.scale)
    angle = math.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))
    shift = rng.uniform(-config.translate, config.translate, 2) * np.array([W, H])
    flip = can_flip and rng.random() < config.flip_prob
    c, s = math.cos(angle), math.sin(angle)
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([W / w, H / h])
    if flip:
        linear = np.diag([-1.0, 1.0]) @ linear
    offset = np.array([W / 2, H / 2]) + shift - linear @ np.array([w / 2, h / 2])
    return np.concatenate([linear, offset[:, None]], axis=1), flip


def warp_image(image: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Apply a continuous-frame 2x3 map with cv2 (which puts pixel centres on integers):
    p_idx_out = A p_idx_in + (b + A (0.5, 0.5) - 0.5)."""
    linear, offset = matrix[:, :2], matrix[:, 2]
    cv_matrix = np.concatenate([linear, (offset + linear @ np.array([0.5, 0.5]) - 0.5)[:, None]], axis=1)
    return cv2.warpAffine(
        image, cv_matrix, out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def transform_keypoints(
    keypoints: np.ndarray, valid: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Map keypoints through ``matrix``; those outside the output image become invalid."""
    out = (keypoints.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    W, H = out_size
    inside = (out[:, 0] >= 0) & (out[:, 0] <= W) & (out[:, 1] >= 0) & (out[:, 1] <= H)
    return out, valid & inside


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float image -> float32 in [0, 1], alpha dropped, 1 or 3 channels kept
    (photometric work on one channel is three times cheaper)."""
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] == 1 else image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1 / 255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1 / 65535)
    return image.astype(np.float32)


def photometric(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Gamma, contrast, brightness, multiplicative noise and blur; uint8/uint16/float image
    in, float32 in [0, 1] out (1 or 3 channels, alpha dropped; uint8 through a lookup table)."""
    gamma = rng.uniform(*config.gamma)
    contrast = np.float32(rng.uniform(*config.contrast))
    shift = np.float32(0.5 + rng.uniform(-config.brightness, config.brightness))
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] == 1 else image[..., :3]
    if image.dtype == np.uint8:
        levels = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
        lut = (np.power(levels, np.float32(gamma)) - np.float32(0.5)) * contrast + shift
        x = cv2.LUT(np.ascontiguousarray(image), lut.astype(np.float32))
    else:
        x = np.clip(to_unit_float(image), 0.0, 1.0)
        if gamma != 1.0:
            x = cv2.pow(x, gamma)
        x = (x - np.float32(0.5)) * contrast + shift
    if rng.random() < config.noise_prob:
        # uniform noise of unit variance: as speckle-like as Gaussian here, and cheaper
        noise = rng.random(x.shape[:2], dtype=np.float32) - np.float32(0.5)
        factor = np.float32(1.0) + np.float32(config.noise_std * math.sqrt(12.0)) * noise
        x = x * (factor[..., None] if x.ndim == 3 else factor)
    if rng.random() < config.blur_prob:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*config.blur_sigma))
    return np.clip(x, 0.0, 1.0)


def augment_sample(
    image: np.ndarray,
    keypoints: np.ndarray | None,
    valid: np.ndarray | None,
    rng: np.random.Generator,
    config: AugmentConfig,
    out_size: tuple[int, int],
    flip_perm: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Warp ``image`` (any size, gray/RGB/RGBA, uint8/uint16/float) to ``out_size``
    (width, height) with a random affine map and photometric changes.

    Returns float32 (H, W, C) in [0, 1] with C = 1 or 3, and the keypoints in output pixels
    with their new validity. A flip happens only when ``flip_perm`` is given.
    """
    h, w = image.shape[:2]
    matrix, flipped = random_affine(rng, config, (w, h), out_size, can_flip=flip_perm is not None)
    warped = warp_image(image, matrix, out_size)
    x = photometric(warped, rng, config)
    if keypoints is None:
        return x, None, None
    kps, ok = transform_keypoints(keypoints, valid, matrix, out_size)
    if flipped:
        perm = np.asarray(flip_perm)
        kps_out, ok_out = np.empty_like(kps), np.empty_like(ok)
        kps_out[perm], ok_out[perm] = kps, ok  # keypoint i becomes keypoint perm[i]
        kps, ok = kps_out, ok_out
    return x, kps, ok


def resize_sample(
    image: np.ndarray, keypoints: np.ndarray | None, out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """No augmentation: the preprocessor's plain resize (float, then cv2 INTER_LINEAR),
    keypoints scaled to output pixels."""
    x = to_unit_float(image)
    h, w = x.shape[:2]
    if (w, h) != tuple(out_size):
        x = cv2.resize(x, tuple(out_size), interpolation=cv2.INTER_LINEAR)
    if keypoints is None:
        return x, None
    return x, (keypoints * np.array([out_size[0] / w, out_size[1] / h], np.float32)).astype(np.float32)
