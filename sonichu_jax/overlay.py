"""Prediction overlays: keypoints plus the measurement each task implies, drawn with OpenCV."""

from __future__ import annotations

import os

import cv2
import numpy as np

from sonichu_jax.fileio import atomic_path
from sonichu_jax.preprocess import load_image, to_float_rgb

# Keypoint pairs joined by a measurement line, and closed contours, per task. Biometry
# tasks measure distances between point pairs (axis end points, segment ends); cardiac
# views outline chambers.
MEASUREMENT_LINES: dict[str, tuple[tuple[int, int], ...]] = {
    "HC": ((0, 1), (2, 3)),
    "FA": ((0, 1), (2, 3)),
    "AOP": ((0, 1), (2, 3)),
    "FUGC": ((0, 1),),
    "IVC": ((0, 1),),
    "fetal_femur": ((0, 1),),
    "PSAX": ((0, 1), (2, 3)),
}
CONTOUR_TASKS = ("PLAX", "A4C")

_POINT_BGR = (0, 255, 255)
_LINE_BGR = (0, 200, 0)
_LABEL_BGR = (255, 160, 0)
_ERROR_BGR = (60, 60, 255)


def _to_bgr_uint8(image) -> np.ndarray:
    rgb = (np.clip(to_float_rgb(load_image(image)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _pixel_grid(keypoints: np.ndarray) -> list[tuple[int, int]]:
    # Continuous frame -> OpenCV's integer pixel grid (pixel i's centre is at i + 0.5).
    return [(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in np.asarray(keypoints, np.float64)]


def draw_overlay(image: np.ndarray, keypoints: np.ndarray, task: str, canvas: np.ndarray | None = None) -> np.ndarray:
    """Return a BGR uint8 copy of ``image`` (an array or a path) with ``keypoints`` (K, 2, original pixels)
    drawn (onto ``canvas`` instead, a BGR uint8 image of the same size, if given)."""
    canvas = _to_bgr_uint8(image) if canvas is None else canvas
    scale = max(canvas.shape[:2]) / 256.0
    thickness = max(1, int(round(scale)))
    radius = max(2, int(round(3 * scale)))
    pts = _pixel_grid(keypoints)
    if task in CONTOUR_TASKS and len(pts) > 2:
        cv2.polylines(canvas, [np.array(pts, np.int32)], True, _LINE_BGR, thickness, cv2.LINE_AA)
    for a, b in MEASUREMENT_LINES.get(task, ()):
        if b < len(pts):
            cv2.line(canvas, pts[a], pts[b], _LINE_BGR, thickness, cv2.LINE_AA)
    for i, p in enumerate(pts):
        cv2.circle(canvas, p, radius, _POINT_BGR, -1, cv2.LINE_AA)
        cv2.putText(canvas, str(i), (p[0] + radius + 1, p[1] - radius - 1), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * scale, _POINT_BGR, 1, cv2.LINE_AA)
    return canvas


def draw_comparison(image: np.ndarray | str, prediction: np.ndarray, label: np.ndarray, valid: np.ndarray,
                    task: str, size: int = 256) -> np.ndarray:
    """BGR uint8 image, its longer side ``size`` px: the label's keypoints as blue rings,
    a red line from each to its predicted point, then the prediction drawn as
    `draw_overlay` draws it. Masked label points get no ring and no line."""
    canvas = _to_bgr_uint8(image)
    factor = size / max(canvas.shape[:2])
    canvas = cv2.resize(canvas, (round(canvas.shape[1] * factor), round(canvas.shape[0] * factor)),
                        interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    scale = size / 256.0
    thickness = max(1, int(round(scale)))
    radius = max(3, int(round(5 * scale)))
    pred_pts = _pixel_grid(np.asarray(prediction) * factor)
    for ok, p, q in zip(np.asarray(valid, bool), _pixel_grid(np.asarray(label) * factor), pred_pts):
        if ok:
            cv2.line(canvas, p, q, _ERROR_BGR, thickness, cv2.LINE_AA)
            cv2.circle(canvas, p, radius, _LABEL_BGR, thickness, cv2.LINE_AA)
    return draw_overlay(canvas, np.asarray(prediction) * factor, task, canvas=canvas)


def save_overlay(image: np.ndarray | str, keypoints: np.ndarray, task: str, path: str) -> str:
    """Draw and write a PNG atomically; returns the path."""
    canvas = draw_overlay(image, keypoints, task)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp + ".png", canvas):
            raise OSError(f"cannot write overlay {path}")
        os.replace(tmp + ".png", tmp)
    return path
