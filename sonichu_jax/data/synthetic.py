"""Synthetic B-mode ultrasound frames with geometrically defined keypoints, for all nine
card tasks: the data set that runs anywhere (demo, tests, benchmarks).

Each frame is a fan-shaped sector (apex above the image) filled with tissue, a per-task
anatomy drawn as echogenicity (bright walls and bones, dark cavities and vessels),
multiplicative speckle (the magnitude of blurred complex Gaussian noise, i.e. correlated
Rayleigh), depth attenuation and log compression. Pose, size, gain, attenuation and fan
geometry are random; everything is deterministic given ``(seed, task, index)``.

Keypoints (continuous pixel frame, pixel ``i`` centred at ``i + 0.5``), per task:

- HC, FA: ellipse (skull / abdomen) axis end points: 0 = left end of the major axis,
  1 = right end, 2 = upper end of the minor axis, 3 = lower end. The major axis is within
  45 degrees of horizontal and clearly longer than the minor axis, so the order is unique.
- fetal_femur: end points of a bright bone with an acoustic shadow: 0 = left, 1 = right.
- FUGC: end points of a thin bright curved band in a grey region: 0 = left, 1 = right.
- AOP: 0/1 = upper/lower end of a symphysis-like bright segment; 2 = the point of the
  head-like ellipse nearest to point 1, 3 = the point of that ellipse farthest from it.
- IVC: a dark vessel with bright walls: 0 = upper wall, 1 = lower wall, both at the
  midpoint of the vessel's centre line (on the lumen boundary, along the normal).
- PSAX: endocardial contour of a ring-shaped ventricle with a right-ventricle crescent on
  one side: 0 = towards the crescent (septal), 1 = upper, 2 = opposite (lateral), 3 = lower.
- PLAX: 0-9 = left-ventricle contour from the apex over the anterior (upper) wall round to
  the posterior wall; 10-15 = aortic walls (10-12 anterior wall, 13-15 posterior wall, each
  from the valve outwards); 16-21 = left-atrium contour from the base direction towards
  posterior.
- A4C: four chambers in the order LV, RV, LA, RA (the left chambers are the larger), each
  with 0 = towards the apex, 1 = away from the septum, 2 = towards the base, 3 = towards
  the septum.

What real multi-centre B-mode data has, and `Acquisition` adds (off by default, so the
plain generator draws every setting independently per frame):

- devices (``devices``): frames come from a few scanners/sites, each with its own gain,
  dynamic range (log-compression strength), attenuation/TGC setting, speckle size
  (transducer bandwidth), sector opening and apex position, and depth setting (a deeper
  setting shows the same anatomy smaller); frames of one device vary a little around its
  presets. Models then meet a mixture of looks rather than one smooth distribution, and
  rarely seen looks are where they disagree.
- shadows (``shadow_rate``): ribs, bowel gas, fetal limbs and bone cast acoustic shadows
  along the beam that can cover part of the anatomy. Annotators still place hidden
  keypoints from the visible context, so a shadowed keypoint stays labelled and models
  must infer it.
- label noise (``label_noise_px``, in `write_synthetic_dataset` only, since it belongs to
  a data set's labels, not to the image): manual keypoints scatter by a few pixels
  between and within observers, and an occasional keypoint is misplaced grossly (a slip
  of the caliper); the images stay the same.

Orders defined by anatomy (PLAX, PSAX, A4C, AOP, IVC) survive a horizontal flip
unchanged; left/right orders (HC, FA, fetal_femur, FUGC) swap. `SYNTHETIC_FLIP_PERMS`
holds the permutation for every task (``perm[i]`` = the index keypoint ``i`` takes after
a flip) and `synthetic_tasks()` returns the task table with them set; train on synthetic
data with that table, so flip augmentation and flip TTA relabel correctly.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

from sonichu_jax.config import CARD_TASKS, TaskSpec
from sonichu_jax.data.records import Record
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_dir

SYNTHETIC_FLIP_PERMS: dict[str, tuple[int, ...]] = {
    "AOP": (0, 1, 2, 3),
    "FUGC": (1, 0),
    "FA": (1, 0, 2, 3),
    "HC": (1, 0, 2, 3),
    "IVC": (0, 1),
    "PLAX": tuple(range(22)),
    "PSAX": (0, 1, 2, 3),
    "A4C": tuple(range(16)),
    "fetal_femur": (1, 0),
}
TASK_NAMES = tuple(t.name for t in CARD_TASKS)
# Image sides: below 32 the anatomy does not fit the sector; at 4096 one frame already
# takes about 1.3 GB of memory while it is drawn.
MIN_SIZE, MAX_SIZE = 32, 4096
_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel accurate anatomy
_ONE = 1 << _SHIFT


def synthetic_tasks(names: Sequence[str] | None = None) -> tuple[TaskSpec, ...]:
    """The card's task table with the synthetic data's flip permutations."""
    names = TASK_NAMES if names is None else tuple(names)
    by_name = {t.name: t for t in CARD_TASKS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"unknown synthetic task(s) {unknown}; valid: {', '.join(TASK_NAMES)}")
    return tuple(TaskSpec(n, by_name[n].num_keypoints, SYNTHETIC_FLIP_PERMS[n]) for n in names)


# ---------------------------------------------------------------------------------------
# Geometry helpers (continuous pixel frame)
# ---------------------------------------------------------------------------------------


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]], np.float64)


def _ellipse(center, a, b, theta, t=None, n=128) -> np.ndarray:
    """Points ``center + R(theta) (a cos t, b sin t)``; y points down, so positive theta
    turns clockwise on screen."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) if t is None else np.asarray(t, np.float64)
    local = np.stack([a * np.cos(t), b * np.sin(t)], axis=-1)
    return np.asarray(center, np.float64) + local @ _rot(theta).T


def _bezier(p0, p1, p2, n=64) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


def _normals(path: np.ndarray) -> np.ndarray:
    """Unit normals of a polyline, oriented to point down the screen (positive y)."""
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return np.where(normal[:, 1:2] < 0, -normal, normal)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    return xs, ys


class _Canvas:
    """An echogenicity map that shapes are blended into, each within its bounding box."""

    def __init__(self, tissue: np.ndarray):
        self.img = tissue
        self.size = tissue.shape[0]

    def _blend(self, pts: np.ndarray, value: float, draw: Callable, pad: float, alpha: float = 1.0) -> None:
        lo = np.floor(pts.min(axis=0) - pad - 2).astype(int).clip(0, self.size)
        hi = np.ceil(pts.max(axis=0) + pad + 2).astype(int).clip(0, self.size)
        if (hi <= lo).any():
            return
        mask = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
        fixed = np.round((pts - lo - 0.5) * _ONE).astype(np.int32)  # to cv2's pixel-centre frame
        draw(mask, fixed)
        weight = mask.astype(np.float32) * (alpha / 255.0)
        region = self.img[lo[1]:hi[1], lo[0]:hi[0]]
        region += (value - region) * weight

    def fill(self, pts, value: float, alpha: float = 1.0) -> None:
        pts = np.asarray(pts, np.float64)
        self._blend(pts, value, lambda m, p: cv2.fillPoly(m, [p], 255, cv2.LINE_AA, _SHIFT), 0, alpha)

    def stroke(self, pts, value: float, thickness: float, closed: bool = False, alpha: float = 1.0) -> None:
        pts = np.asarray(pts, np.float64)
        width = max(1, int(round(thickness)))
        self._blend(
            pts, value,
            lambda m, p: cv2.polylines(m, [p], closed, 255, width, cv2.LINE_AA, _SHIFT),
            width, alpha,
        )

    def multiply(self, pts, factor: float) -> None:
        """Scale the echogenicity inside a polygon (acoustic shadow)."""
        pts = np.asarray(pts, np.float64)
        lo = np.floor(pts.min(axis=0) - 2).astype(int).clip(0, self.size)
        hi = np.ceil(pts.max(axis=0) + 2).astype(int).clip(0, self.size)
        if (hi <= lo).any():
            return
        mask = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
        cv2.fillPoly(mask, [np.round((pts - lo - 0.5) * _ONE).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
        weight = mask.astype(np.float32) / 255.0
        self.img[lo[1]:hi[1], lo[0]:hi[0]] *= 1.0 - (1.0 - factor) * weight


@dataclass(frozen=True)
class Acquisition:
    """How frames are acquired and labelled beyond the plain generator (module docstring)."""

    devices: int = 0  # scanners/sites the frames come from; 0: every setting drawn per frame
    shadow_rate: float = 0.0  # share of frames with an acoustic shadow across the sector
    label_noise_px: float = 0.0  # observer scatter (std, px at 256 px; scales with size)
    slip_rate: float = 0.0  # share of labelled keypoints misplaced grossly


class _Device:
    """One scanner's presets, drawn from ``(seed, device)`` so that all frames of a data
    set share them; ``draw`` jitters a preset by +-``spread`` of its value per frame."""

    RANGES = {"gain": (0.6, 1.5), "dynamic": (3.0, 25.0), "attenuation": (0.3, 1.8), "speckle": (0.5, 1.4),
              "half_angle": (30.0, 50.0), "apex": (0.02, 0.14), "zoom": (0.8, 1.12)}

    def __init__(self, seed: int, device: int):
        rng = np.random.default_rng([seed, 1 << 20, device])
        self.presets = {k: rng.uniform(*r) for k, r in self.RANGES.items()}

    def draw(self, rng, key: str, spread: float = 0.06) -> float:
        return self.presets[key] * rng.uniform(1 - spread, 1 + spread)


def _uniform(rng, device: _Device | None, key: str, low: float, high: float) -> float:
    """The plain draw, or the frame's device preset (jittered)."""
    return rng.uniform(low, high) if device is None else device.draw(rng, key)


class _Fan:
    """Sector geometry: apex (above the image), half-angle, near and far radii."""

    def __init__(self, rng: np.random.Generator, size: int, device: _Device | None = None):
        apex_depth = _uniform(rng, device, "apex", 0.02, 0.12)
        self.apex = np.array([size * (0.5 + rng.uniform(-0.04, 0.04)), -size * apex_depth])
        self.half_angle = math.radians(_uniform(rng, device, "half_angle", 36, 46))
        self.r_near = -self.apex[1] + size * rng.uniform(0.03, 0.08)
        self.r_far = -self.apex[1] + size * rng.uniform(0.97, 1.08)

    def polar(self, x, y):
        dx, dy = x - self.apex[0], y - self.apex[1]
        return np.hypot(dx, dy), np.arctan2(dx, dy)  # angle from straight down

    def contains(self, pts: np.ndarray, margin: float) -> bool:
        r, phi = self.polar(pts[:, 0], pts[:, 1])
        inside_angle = np.abs(phi) * r <= self.half_angle * r - margin
        return bool(np.all(inside_angle & (r >= self.r_near + margin) & (r <= self.r_far - margin)))

    def beam(self, point: np.ndarray) -> np.ndarray:
        d = point - self.apex
        return d / np.linalg.norm(d)


# ---------------------------------------------------------------------------------------
# Per-task anatomy. Each draws into the canvas and returns the keypoints (K, 2).
# `place` gives the anatomy's centre; sizes are fractions of the image size S.
# ---------------------------------------------------------------------------------------


def _axis_points(c, a, b, theta) -> np.ndarray:
    u = np.array([math.cos(theta), math.sin(theta)])
    n = np.array([-math.sin(theta), math.cos(theta)])  # points down for |theta| < 90 deg
    return np.array([c - a * u, c + a * u, c - b * n, c + b * n])


def _hc(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    a = S * rng.uniform(0.2, 0.3)
    b = a * rng.uniform(0.7, 0.85)
    theta = math.radians(rng.uniform(-45, 45))
    ring = _ellipse(c, a, b, theta)
    cv.fill(ring, rng.uniform(0.12, 0.25))
    for side in (-1, 1):  # thalami-like dark ovals either side of the midline
        off = _rot(theta) @ np.array([rng.uniform(-0.15, 0.15) * a, side * 0.3 * b])
        cv.fill(_ellipse(c + off, 0.18 * a, 0.12 * b, theta, n=32), 0.04)
    u = np.array([math.cos(theta), math.sin(theta)])
    cv.stroke([c - 0.85 * a * u, c + 0.85 * a * u], 0.9, 1)  # falx
    cv.stroke(ring, rng.uniform(1.4, 2.0), S * rng.uniform(0.016, 0.028), closed=True)
    return _axis_points(c, a, b, theta)


def _fa(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    a = S * rng.uniform(0.19, 0.27)
    b = a * rng.uniform(0.72, 0.87)
    theta = math.radians(rng.uniform(-45, 45))
    contour = _ellipse(c, a, b, theta)
    cv.fill(contour, rng.uniform(0.35, 0.5))
    R = _rot(theta)
    stomach = c + R @ np.array([rng.uniform(-0.35, 0.35) * a, rng.uniform(-0.3, 0.0) * b])
    cv.fill(_ellipse(stomach, 0.22 * a, 0.16 * b, theta + rng.uniform(-0.5, 0.5), n=32), 0.03)
    spine_t = rng.uniform(0, 2 * np.pi)
    spine = _ellipse(c, 0.8 * a, 0.8 * b, theta, t=[spine_t])[0]
    cv.fill(_ellipse(spine, 0.07 * a, 0.07 * a, 0, n=24), 1.8)
    cv.stroke(contour, rng.uniform(0.9, 1.3), S * rng.uniform(0.008, 0.014), closed=True)
    return _axis_points(c, a, b, theta)


def _segment_endpoints(c, length, theta, bow, n=65) -> tuple[np.ndarray, np.ndarray]:
    u = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-math.sin(theta), math.cos(theta)])
    p0, p2 = c - 0.5 * length * u, c + 0.5 * length * u
    return _bezier(p0, c + bow * length * normal, p2, n), np.array([p0, p2])


def _femur(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    length = S * rng.uniform(0.25, 0.4)
    path, ends = _segment_endpoints(c, length, math.radians(rng.uniform(-35, 35)), rng.uniform(-0.06, 0.06))
    far = fan.r_far * 1.2
    shadow = np.concatenate([path, (path + far * np.array([fan.beam(p) for p in path]))[::-1]])
    cv.multiply(shadow, rng.uniform(0.15, 0.35))
    cv.stroke(path, rng.uniform(1.8, 2.5), S * rng.uniform(0.02, 0.035))
    return ends


def _fugc(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    length = S * rng.uniform(0.3, 0.48)
    theta = math.radians(rng.uniform(-30, 30))
    path, ends = _segment_endpoints(c, length, theta, rng.uniform(-0.15, 0.15))
    cv.fill(_ellipse(c, 0.62 * length, 0.16 * length, theta, n=48), rng.uniform(0.6, 0.8))
    cv.stroke(path, rng.uniform(1.2, 1.6), S * rng.uniform(0.01, 0.018))
    return ends


def _aop(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    # The symphysis sits left of `c`, the head below-right of its lower end.
    c = c - np.array([0.14 * S, 0.0])
    length = S * rng.uniform(0.14, 0.22)
    alpha = math.radians(rng.uniform(25, 60))  # from vertical, leaning right going down
    d = np.array([math.sin(alpha), math.cos(alpha)])
    p0, p1 = c - 0.5 * length * d, c + 0.5 * length * d
    a = S * rng.uniform(0.15, 0.21)
    b = a * rng.uniform(0.75, 0.9)
    theta = math.radians(rng.uniform(-30, 30))
    beta = math.radians(rng.uniform(-5, 35))
    head_c = p1 + a * rng.uniform(1.1, 1.35) * np.array([math.cos(beta), math.sin(beta)])
    head = _ellipse(head_c, a, b, theta, n=720)
    cv.fill(head, rng.uniform(0.15, 0.3))
    cv.stroke(head, rng.uniform(1.3, 1.8), S * rng.uniform(0.014, 0.022), closed=True)
    cv.stroke([p0, p1], rng.uniform(1.4, 2.0), S * rng.uniform(0.022, 0.035))
    dist = np.linalg.norm(head - p1, axis=1)
    return np.array([p0, p1, head[np.argmin(dist)], head[np.argmax(dist)]])


def _ivc(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    length = S * rng.uniform(0.45, 0.7)
    path, _ = _segment_endpoints(c, length, math.radians(rng.uniform(-25, 25)), rng.uniform(-0.08, 0.08))
    r0 = S * rng.uniform(0.035, 0.065)
    t = np.linspace(0, 1, len(path))
    radius = r0 * np.clip(np.minimum(t, 1 - t) / 0.1, 0.35, 1.0)  # tapering ends
    normals = _normals(path)
    upper, lower = path - radius[:, None] * normals, path + radius[:, None] * normals
    outline = np.concatenate([upper, lower[::-1]])
    cv.fill(outline, rng.uniform(0.0, 0.06))
    wall = S * rng.uniform(0.01, 0.016)
    cv.stroke(upper, rng.uniform(1.2, 1.6), wall)
    cv.stroke(lower, rng.uniform(1.2, 1.6), wall)
    mid = len(path) // 2  # an odd sample count puts this at t = 0.5
    return np.array([upper[mid], lower[mid]])


def _psax(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    a = S * rng.uniform(0.1, 0.15)
    b = a * rng.uniform(0.85, 1.0)
    phi = math.pi + math.radians(rng.uniform(-30, 30))  # crescent to the left
    wall = a * rng.uniform(0.3, 0.45)
    u = np.array([math.cos(phi), math.sin(phi)])
    rv_c = c + (a + wall + 0.35 * a) * u
    cv.fill(_ellipse(rv_c, 0.75 * a, 1.45 * b, phi, n=64), 0.85)
    cv.fill(_ellipse(rv_c, 0.5 * a, 1.25 * b, phi, n=64), 0.04)
    cv.fill(_ellipse(c, a + wall, b + wall, phi), rng.uniform(0.8, 1.0))
    cv.stroke(_ellipse(c, a + wall, b + wall, phi), 1.5, S * 0.008, closed=True)
    cv.fill(_ellipse(c, a, b, phi), rng.uniform(0.0, 0.06))
    pts = _ellipse(c, a, b, phi, t=[0, np.pi / 2, np.pi, 3 * np.pi / 2])
    side = pts[[1, 3]]
    upper, lower = (side[0], side[1]) if side[0, 1] < side[1, 1] else (side[1], side[0])
    return np.array([pts[0], upper, pts[2], lower])


def _plax(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    s = S * rng.uniform(0.55, 0.78)
    R = _rot(math.radians(rng.uniform(-30, 15)))  # u: apex -> base (right), v: posterior (down)
    theta = math.atan2(R[1, 0], R[0, 0])

    def at(u, v):  # the layout spans u in [-0.43, 0.6]: centre it on `c`
        return c + R @ (s * np.array([u - 0.08, v]))

    cv.fill(_ellipse(at(-0.05, -0.21), 0.3 * s, 0.055 * s, theta, n=48), 0.05)  # RV
    cv.fill(_ellipse(at(-0.06, 0.0), 0.37 * s, 0.16 * s, theta), rng.uniform(0.75, 0.95))  # myocardium
    lv = dict(center=at(-0.08, 0.0), a=0.3 * s, b=0.1 * s, theta=theta)
    cv.fill(_ellipse(**lv), 0.04)
    ao_c, ao_r = -0.08, 0.058
    ao_top = np.array([at(u, ao_c - ao_r) for u in (0.22, 0.38, 0.55)])
    ao_bot = np.array([at(u, ao_c + ao_r) for u in (0.22, 0.38, 0.55)])
    cv.fill(np.concatenate([ao_top, ao_bot[::-1]]), 0.04)
    cv.stroke(ao_top, 1.4, S * 0.012)
    cv.stroke(ao_bot, 1.4, S * 0.012)
    la = dict(center=at(0.38, 0.12), a=0.11 * s, b=0.095 * s, theta=theta)
    cv.fill(_ellipse(**la), 0.05)
    cv.stroke([at(-0.35, 0.2), at(0.55, 0.22)], rng.uniform(1.4, 1.9), S * 0.014)  # pericardium
    lv_pts = _ellipse(**lv, t=np.pi + 2 * np.pi * np.arange(10) / 10)
    la_pts = _ellipse(**la, t=2 * np.pi * np.arange(6) / 6)
    return np.concatenate([lv_pts, ao_top, ao_bot, la_pts])


def _a4c(cv: _Canvas, rng, S, c, fan) -> np.ndarray:
    # `c` is the heart's apex; u points from apex to base (down), v towards the LV (right).
    s = S * rng.uniform(0.72, 0.9)
    R = _rot(math.radians(rng.uniform(-15, 15)))
    down = R @ np.array([0.0, 1.0])
    right = R @ np.array([1.0, 0.0])
    theta_v = math.atan2(down[1], down[0])  # ellipse axis `a` along u

    def at(u, v):
        return c + s * (u * down + v * right)

    cv.fill(_ellipse(at(0.45, 0.02), 0.45 * s, 0.3 * s, theta_v), rng.uniform(0.7, 0.9))
    chambers = [  # (u, v) centre, half-length along u, half-width along v
        ((0.31, 0.13), 0.25, 0.105),  # LV
        ((0.35, -0.115), 0.2, 0.08),  # RV
        ((0.71, 0.13), 0.12, 0.105),  # LA
        ((0.71, -0.115), 0.1, 0.08),  # RA
    ]
    pts = []
    for (u, v), hu, hv in chambers:
        center = at(u, v)
        cv.fill(_ellipse(center, hu * s, hv * s, theta_v), rng.uniform(0.0, 0.06))
        sign = 1.0 if v > 0 else -1.0
        pts += [
            center - hu * s * down,
            center + sign * hv * s * right,
            center + hu * s * down,
            center - sign * hv * s * right,
        ]
    cv.stroke([at(0.575, -0.2), at(0.575, 0.24)], 1.3, S * 0.008)  # valve plane
    return np.array(pts)


# (drawer, how to place the anatomy's reference point: depth range and lateral spread as
# fractions of S)
_ANATOMY = {
    "HC": (_hc, (0.4, 0.6), 0.12),
    "FA": (_fa, (0.4, 0.6), 0.12),
    "fetal_femur": (_femur, (0.3, 0.6), 0.15),
    "FUGC": (_fugc, (0.35, 0.65), 0.12),
    "AOP": (_aop, (0.25, 0.45), 0.12),
    "IVC": (_ivc, (0.35, 0.65), 0.1),
    "PSAX": (_psax, (0.35, 0.65), 0.15),
    "PLAX": (_plax, (0.45, 0.65), 0.1),
    "A4C": (_a4c, (0.06, 0.18), 0.08),
}


def _place(rng, S, fan: _Fan, depth_range, spread) -> np.ndarray:
    depth = S * rng.uniform(*depth_range)
    return np.array([fan.apex[0] + S * rng.uniform(-spread, spread), depth])


def _tissue(rng, S) -> np.ndarray:
    """Background echogenicity: a base level with smooth large-scale variation."""
    coarse = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    smooth = cv2.resize(coarse, (S, S), interpolation=cv2.INTER_LINEAR)
    tissue = rng.uniform(0.35, 0.6) + rng.uniform(0.05, 0.15) * smooth
    return np.clip(tissue, 0.05, None).astype(np.float32)


def _clutter(cv: _Canvas, rng, S) -> None:
    """A few echoes unrelated to the keypoints, drawn before (so under) the anatomy."""
    for _ in range(rng.integers(2, 5)):
        c = rng.uniform(0.1, 0.9, 2) * S
        cv.fill(_ellipse(c, S * rng.uniform(0.03, 0.1), S * rng.uniform(0.02, 0.06), rng.uniform(0, np.pi), n=32),
                rng.uniform(0.1, 0.9), alpha=rng.uniform(0.4, 0.8))
    for _ in range(rng.integers(0, 3)):
        p = rng.uniform(0.05, 0.95, 2) * S
        q = p + rng.normal(0, 0.15, 2) * S
        cv.stroke([p, q], rng.uniform(0.8, 1.3), S * rng.uniform(0.004, 0.01), alpha=0.7)


def _complex_gaussian(rng, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of white complex Gaussian noise by Box-Muller (cheaper
    than two calls to standard_normal)."""
    u = rng.random((S, S), dtype=np.float32)
    v = rng.random((S, S), dtype=np.float32)
    radius = cv2.sqrt(np.float32(-2.0) * cv2.log(np.float32(1.0) - u))  # 1 - u is in (0, 1]
    return cv2.polarToCart(radius, np.float32(2 * np.pi) * v)


def _shadow(cv: _Canvas, rng, S: int, fan: _Fan) -> None:
    """An acoustic shadow: a bright reflector (rib, gas, bone) at some depth and the dark
    beam-aligned wedge behind it, anywhere across the sector."""
    phi = rng.uniform(-0.8, 0.8) * fan.half_angle
    width = math.radians(rng.uniform(3, 9))
    r0 = fan.r_near + S * rng.uniform(0.05, 0.5)
    rays = [np.array([math.sin(a), math.cos(a)]) for a in (phi - width, phi + width)]
    near = [fan.apex + r0 * ray for ray in rays]
    far = [fan.apex + 2 * fan.r_far * ray for ray in rays]
    cv.multiply(np.array([near[0], near[1], far[1], far[0]]), rng.uniform(0.05, 0.3))
    cv.stroke(np.array(near), rng.uniform(1.4, 2.0), S * rng.uniform(0.01, 0.02))


def _render(tissue: np.ndarray, fan: _Fan, rng, S: int, device: _Device | None = None) -> np.ndarray:
    """Speckle, attenuation, log compression and the sector mask -> uint8."""
    xs, ys = _grid(S)
    dx = xs - np.float32(fan.apex[0])
    dy = ys - np.float32(fan.apex[1])
    r = cv2.magnitude(dx, dy)
    # Speckle: the magnitude of low-passed complex Gaussian noise is correlated Rayleigh.
    sigma = _uniform(rng, device, "speckle", 0.6, 1.1) * S / 256
    re, im = _complex_gaussian(rng, S)
    speckle = cv2.magnitude(cv2.GaussianBlur(re, (0, 0), sigma), cv2.GaussianBlur(im, (0, 0), sigma))
    speckle *= np.float32(1.0 / np.sqrt(np.mean(speckle * speckle)))
    attenuation = cv2.exp(np.float32(-_uniform(rng, device, "attenuation", 0.3, 1.6) / S) * (r - np.float32(fan.r_near)))
    envelope = tissue * speckle * attenuation * np.float32(_uniform(rng, device, "gain", 0.7, 1.4))
    k = np.float32(_uniform(rng, device, "dynamic", 4, 20))
    display = cv2.log(np.float32(1.0) + k * envelope) * np.float32(1.0 / np.log1p(k * 2.5))
    display += np.float32(0.04) * (rng.random((S, S), dtype=np.float32) - np.float32(0.5))  # electronic noise
    # Soft sector edge: distances (px) to the two side rays and the two arcs.
    sin_h, cos_h = np.float32(math.sin(fan.half_angle)), np.float32(math.cos(fan.half_angle))
    inside = np.minimum(dy * sin_h - np.abs(dx) * cos_h, r - np.float32(fan.r_near))
    inside = np.minimum(inside, np.float32(fan.r_far) - r)
    display *= np.clip(inside * np.float32(1 / 1.5), 0.0, 1.0)
    return cv2.convertScaleAbs(np.clip(display, 0.0, 1.0), alpha=255.0)


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"synthetic image size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")


def generate_sample(task: str, index: int, seed: int = 0, size: int = 256,
                    acquisition: Acquisition | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frame: (uint8 (size, size) image, float32 (K, 2) true keypoints).

    Deterministic in ``(task, index, seed, size, acquisition)`` and independent of other
    samples, so any subset can be generated in any order or in parallel.
    """
    if task not in _ANATOMY:
        raise InputError(f"unknown synthetic task {task!r}; valid: {', '.join(TASK_NAMES)}")
    _check_size(size)
    if seed < 0:
        raise InputError(f"synthetic seed must be a non-negative integer, got {seed}")
    rng = np.random.default_rng([seed, TASK_NAMES.index(task), index])
    draw, depth_range, spread = _ANATOMY[task]
    acq = acquisition or Acquisition()
    device = _Device(seed, int(rng.integers(acq.devices))) if acq.devices else None
    scale = size * (1.0 if device is None else device.draw(rng, "zoom", 0.03))  # the depth setting
    fan = _Fan(rng, size, device)
    margin = 0.03 * size
    # Rejection sampling: redraw the pose until every keypoint is well inside the sector.
    for _ in range(100):
        canvas = _Canvas(_tissue(rng, size))
        _clutter(canvas, rng, size)
        keypoints = draw(canvas, rng, scale, _place(rng, size, fan, depth_range, spread), fan)
        if fan.contains(keypoints, margin):
            break
    else:  # pragma: no cover - the pose ranges above make this practically unreachable
        raise RuntimeError(f"could not place a {task} anatomy inside the sector")
    shadow_rng = np.random.default_rng([seed, TASK_NAMES.index(task), index, 1 << 22])  # leaves the frame's draws alone
    if acq.shadow_rate and shadow_rng.random() < acq.shadow_rate:
        _shadow(canvas, shadow_rng, size, fan)
    return _render(canvas.img, fan, rng, size, device), keypoints.astype(np.float32)


def observed_labels(keypoints: np.ndarray, task: str, index: int, seed: int, size: int,
                    acquisition: Acquisition) -> np.ndarray:
    """An observer's keypoints for a frame's true ``keypoints``: Gaussian scatter, and
    now and then one keypoint misplaced by several times the scatter."""
    rng = np.random.default_rng([seed, TASK_NAMES.index(task), index, 1 << 21])
    sigma = acquisition.label_noise_px * size / 256
    noisy = keypoints + rng.normal(0.0, sigma, keypoints.shape)
    slips = rng.random(len(keypoints)) < acquisition.slip_rate
    angle = rng.uniform(0, 2 * np.pi, len(keypoints))
    noisy[slips] += (6 * sigma * np.stack([np.cos(angle), np.sin(angle)], -1))[slips]
    return np.clip(noisy, 0.0, size).astype(np.float32)


def synthetic_records(
    n_per_task: int, tasks: Sequence[str] | None = None, seed: int = 0, size: int = 256
) -> list[Record]:
    """In-memory records (image arrays), task by task."""
    records = []
    for task in TASK_NAMES if tasks is None else tasks:
        for i in range(n_per_task):
            image, kps = generate_sample(task, i, seed, size)
            records.append(Record(image=image, task=task, keypoints=kps, source_id=f"{task}_{i:06d}"))
    return records


def check_synthetic_request(
    out_dir: str | os.PathLike, n_per_task: int, tasks: Sequence[str] | None, seed: int, size: int
) -> tuple[str, tuple[str, ...]]:
    """Check a data-set request before any work; returns (absolute out_dir, tasks)."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    tasks = TASK_NAMES if tasks is None else tuple(tasks)
    synthetic_tasks(tasks)  # validates the names
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise InputError(f"synthetic task(s) given more than once: {', '.join(twice)}")
    if n_per_task < 1:
        raise InputError(f"need at least one image per task, got {n_per_task}")
    if seed < 0:
        raise InputError(f"synthetic seed must be a non-negative integer, got {seed}")
    _check_size(size)
    if os.path.isfile(out_dir):
        raise InputError(f"output folder {out_dir} is an existing file")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise InputError(f"output folder {out_dir} already exists and is not empty")
    parent = os.path.dirname(out_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"output folder {out_dir} is below {parent}, which is a file")
    return out_dir, tasks


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n_per_task: int,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    size: int = 256,
    csv: bool = False,
    progress: Callable[[int], None] | None = None,
    acquisition: Acquisition | None = None,
) -> str:
    """Write ``n_per_task`` frames per task as a ready data set; returns ``out_dir``.
    ``acquisition``: devices, shadows and label noise (the manifest then holds the
    observed labels; `generate_sample` still gives the truth).

    Layout: ``images/<task>/<task>_<index>.png``, ``manifest.jsonl`` (the format of
    `sonichu_jax.data.sources`) and, with ``csv=True``, one FM_UIA-style ``<task>.csv``
    per task (columns ``image``, ``point_1_xy`` ...). Everything is written into a
    temporary folder beside ``out_dir`` and renamed into place at the end, so an
    interrupted run (an exception, KeyboardInterrupt or SystemExit) leaves nothing
    behind. ``out_dir`` must not exist or be empty.
    ``progress`` is called with the number of images written since the last call.
    """
    out_dir, tasks = check_synthetic_request(out_dir, n_per_task, tasks, seed, size)
    try:
        with atomic_dir(out_dir) as tmp:
            _write_into(tmp, n_per_task, tasks, seed, size, csv, progress, acquisition)
    except OSError as exc:  # an unwritable parent, a full disk
        raise InputError(f"cannot write the data set to {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def _write_into(tmp: str, n_per_task: int, tasks: Sequence[str], seed: int, size: int, csv: bool,
                progress: Callable[[int], None] | None, acquisition: Acquisition | None = None) -> None:
    from sonichu_jax.data.sources import MANIFEST_NAME, manifest_line

    lines, csv_rows = [], {t: [] for t in tasks}
    for task in tasks:
        os.makedirs(os.path.join(tmp, "images", task))
        for i in range(n_per_task):
            image, kps = generate_sample(task, i, seed, size, acquisition)
            if acquisition and (acquisition.label_noise_px or acquisition.slip_rate):
                kps = observed_labels(kps, task, i, seed, size, acquisition)
            rel = f"images/{task}/{task}_{i:06d}.png"
            if not cv2.imwrite(os.path.join(tmp, rel), image):
                raise OSError(f"cannot write {os.path.join(tmp, rel)}")
            record = Record(image=rel, task=task, keypoints=kps, source_id=f"{task}_{i:06d}")
            lines.append(manifest_line(record, size=(size, size)))
            csv_rows[task].append([rel] + [f"[{x:.3f}, {y:.3f}]" for x, y in kps])
            if progress is not None:
                progress(1)
    with open(os.path.join(tmp, MANIFEST_NAME), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    if csv:
        import csv as csv_module

        for task, rows in csv_rows.items():
            k = len(rows[0]) - 1
            with open(os.path.join(tmp, f"{task}.csv"), "w", newline="") as fh:
                writer = csv_module.writer(fh)
                writer.writerow(["image"] + [f"point_{j + 1}_xy" for j in range(k)])
                writer.writerows(rows)
