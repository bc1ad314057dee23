"""I-JEPA multi-block masks, sampled on the host with numpy: ``official`` reproduces
facebookresearch/ijepa's sampler, ``fixed`` lets blocks span the whole grid and never
relaxes the no-overlap rule. Every batch has the same static shapes, and the masks are a
pure function of ``(seed, step, process_index)``. The rules, the two modes, the static
shapes and the randomness: docs/ijepa.md, "Masks".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sonichu_jax.errors import ConfigError

MODES = ("official", "fixed")
EQUALIZE = ("batch_min", "none")
RETRIES = 20  # official: failed placements before a constraint is relaxed
MAX_ATTEMPTS = 2000  # fixed: placements per image before giving up with an error


class MaskSamplingError(ConfigError):
    """The mask settings cannot produce valid masks on this grid."""


@dataclass(frozen=True)
class MaskConfig:
    """Multi-block mask settings; defaults are the official I-JEPA values."""

    context_scale: tuple[float, float] = (0.85, 1.0)  # fraction of the grid, before targets are cut out
    target_scale: tuple[float, float] = (0.15, 0.2)
    aspect: tuple[float, float] = (0.75, 1.5)  # target height / width; the context block is square
    num_targets: int = 4
    min_keep: int = 10  # a block must keep more than this many patches
    allow_overlap: bool = False  # True: targets are not cut out of the context
    mode: str = "official"
    equalize: str = "batch_min"
    context_len: int = 0  # static context length; 0 (or more) = the largest possible context block

    def __post_init__(self):
        object.__setattr__(self, "context_scale", tuple(float(v) for v in self.context_scale))
        object.__setattr__(self, "target_scale", tuple(float(v) for v in self.target_scale))
        object.__setattr__(self, "aspect", tuple(float(v) for v in self.aspect))
        if self.mode not in MODES:
            raise ConfigError(f"masks.mode must be one of {MODES}, got {self.mode!r}")
        if self.equalize not in EQUALIZE:
            raise ConfigError(f"masks.equalize must be one of {EQUALIZE}, got {self.equalize!r}")
        for name in ("context_scale", "target_scale", "aspect"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi or (name != "aspect" and hi > 1):
                bound = "" if name == "aspect" else " <= 1"
                raise ConfigError(f"masks.{name} must be (low, high) with 0 < low <= high{bound}, got {(lo, hi)}")
        if self.num_targets < 1:
            raise ConfigError(f"masks.num_targets must be >= 1, got {self.num_targets}")
        if self.min_keep < 0 or self.context_len < 0:
            raise ConfigError("masks.min_keep and masks.context_len must be >= 0")


def block_size(r: float, scale: tuple[float, float], aspect: tuple[float, float], grid: tuple[int, int],
               mode: str) -> tuple[int, int]:
    """(h, w) of a block for the uniform draw ``r``: one draw sets both scale and aspect."""
    gh, gw = grid
    keep = int(gh * gw * (scale[0] + r * (scale[1] - scale[0])))
    ar = aspect[0] + r * (aspect[1] - aspect[0])
    h = int(round(math.sqrt(keep * ar)))
    w = int(round(math.sqrt(keep / ar)))
    # official: the block must leave at least one free row/column for randint's bound
    limit_h, limit_w = (gh - 1, gw - 1) if mode == "official" else (gh, gw)
    return min(h, limit_h), min(w, limit_w)


def _draw_breakpoints(scale: tuple[float, float], aspect: tuple[float, float], n: int) -> list[float]:
    """Every ``r`` in [0, 1] at which `block_size` may change: where ``keep`` crosses an
    integer, or ``sqrt(keep * ar)`` / ``sqrt(keep / ar)`` crosses a rounding edge."""
    (s0, s1), (a0, a1) = scale, aspect
    points = [0.0, 1.0]
    if s1 > s0:
        points += [(m / n - s0) / (s1 - s0) for m in range(int(n * s0), int(n * s1) + 2)]
    if a1 > a0:
        k_max = int(math.sqrt(n * max(a1, 1 / a0))) + 2
        for m in range(max(int(n * s0), 1), int(n * s1) + 1):
            for k in range(k_max):
                edge = (k + 0.5) ** 2
                points += [(edge / m - a0) / (a1 - a0), (m / edge - a0) / (a1 - a0)]
    return sorted(p for p in points if 0.0 <= p <= 1.0)


def possible_sizes(scale, aspect, grid, mode) -> set[tuple[int, int]]:
    """Every (h, w) that a draw r in [0, 1) can give, exactly: `block_size` is piecewise
    constant between the breakpoints, so one point inside each piece and every breakpoint
    (r = 1 excluded: the draw never reaches it) cover all of them."""
    points = _draw_breakpoints(scale, aspect, grid[0] * grid[1])
    probes = points + [(a + b) / 2 for a, b in zip(points, points[1:])]
    return {block_size(r, scale, aspect, grid, mode) for r in probes if r < 1.0}


class MultiBlockMaskSampler:
    """Samples the masks of one batch; as a grain ``map_with_index`` transform it adds
    them to each batch dict (``batch -> batch | masks``, keyed by the batch index)."""

    def __init__(self, config: MaskConfig, grid: tuple[int, int], seed: int = 0, process_index: int = 0):
        self.config = config
        self.grid = (int(grid[0]), int(grid[1]))
        self.seed = int(seed)
        self.process_index = int(process_index)
        gh, gw = self.grid
        if config.mode == "official" and min(gh, gw) < 2:
            raise MaskSamplingError(f"official masks need a grid of at least 2 x 2 patches, got {gh} x {gw}")
        target = possible_sizes(config.target_scale, config.aspect, self.grid, config.mode)
        context = possible_sizes(config.context_scale, (1.0, 1.0), self.grid, config.mode)
        self._check_sizes("target", target)
        self._check_sizes("context", context)
        self.target_len = max(h * w for h, w in target)
        self.max_context = max(h * w for h, w in context)
        # slots beyond the largest possible context would only ever hold padding
        self.context_len = min(config.context_len or self.max_context, self.max_context)

    def _check_sizes(self, kind: str, sizes: set[tuple[int, int]]) -> None:
        """Reject settings for which some draw gives a block that can never keep more
        than ``min_keep`` patches (the official sampler would loop forever)."""
        c = self.config
        h, w = min(sizes, key=lambda s: s[0] * s[1])
        if h * w <= c.min_keep:
            scale = c.target_scale if kind == "target" else c.context_scale
            raise MaskSamplingError(
                f"on a {self.grid[0]} x {self.grid[1]} patch grid, {kind} scale {scale} gives blocks as small as "
                f"{h} x {w} = {h * w} patches, not more than masks.min_keep={c.min_keep}: such a block is never "
                f"valid. Lower masks.min_keep, raise the {kind} scale, or use a finer patch grid."
            )

    # -- placement -----------------------------------------------------------------------
    def _place(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        gh, gw = self.grid
        # official: randint(0, grid - size) excludes its upper bound (PR #40)
        extra = 0 if self.config.mode == "official" else 1
        top = int(rng.integers(0, gh - h + extra))
        left = int(rng.integers(0, gw - w + extra))
        block = np.zeros(self.grid, bool)
        block[top : top + h, left : left + w] = True
        return block

    def _context_official(self, rng, size, targets: list[np.ndarray]) -> np.ndarray:
        regions = None if self.config.allow_overlap else [~t for t in targets]
        relaxed, failures = 0, 0
        while True:
            mask = self._place(rng, *size)
            if regions is not None:
                for region in regions[: max(len(regions) - relaxed, 0)]:
                    mask &= region
            if mask.sum() > self.config.min_keep:
                return mask
            failures += 1
            if failures == RETRIES:  # drop the last remaining target constraint
                relaxed, failures = relaxed + 1, 0

    def _image_fixed(self, rng, t_size, c_size) -> tuple[list[np.ndarray], np.ndarray]:
        c = self.config
        for attempt in range(MAX_ATTEMPTS):
            if attempt % RETRIES == 0:  # a fresh set of targets every RETRIES placements
                targets = [self._place(rng, *t_size) for _ in range(c.num_targets)]
                free = np.ones(self.grid, bool)
                if not c.allow_overlap:
                    for t in targets:
                        free &= ~t
            mask = self._place(rng, *c_size) & free
            if mask.sum() > c.min_keep:
                return targets, mask
        raise MaskSamplingError(
            f"no context block of {c_size[0]} x {c_size[1]} keeps more than masks.min_keep={c.min_keep} patches "
            f"outside {c.num_targets} target blocks of {t_size[0]} x {t_size[1]} on a {self.grid[0]} x "
            f"{self.grid[1]} grid in {MAX_ATTEMPTS} tries: lower masks.num_targets, masks.target_scale or "
            f"masks.min_keep, or raise masks.context_scale."
        )

    # -- one batch ----------------------------------------------------------------------
    def sizes(self, step: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(target (h, w), context (h, w)) of batch ``step``: identical on every host."""
        c = self.config
        rng = np.random.default_rng([self.seed, int(step)])
        t_size = block_size(float(rng.random()), c.target_scale, c.aspect, self.grid, c.mode)
        c_size = block_size(float(rng.random()), c.context_scale, (1.0, 1.0), self.grid, c.mode)
        return t_size, c_size

    def sample_blocks(self, step: int, batch_size: int) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
        """Per image: its target blocks and its context, as boolean grids (before any cut)."""
        c = self.config
        t_size, c_size = self.sizes(step)
        rng = np.random.default_rng([self.seed, int(step), 1 + self.process_index])
        all_targets, contexts = [], []
        for _ in range(batch_size):
            if c.mode == "official":
                targets = [self._place(rng, *t_size) for _ in range(c.num_targets)]
                context = self._context_official(rng, c_size, targets)
            else:
                targets, context = self._image_fixed(rng, t_size, c_size)
            all_targets.append(targets)
            contexts.append(context)
        return all_targets, contexts

    def sample(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """Static-shape masks of batch ``step``:

        - ``context_idx`` int32 (B, context_len), ``context_valid`` bool (B, context_len)
        - ``target_idx`` int32 (B, num_targets, target_len), ``target_valid`` bool (same)
        """
        c = self.config
        all_targets, contexts = self.sample_blocks(step, batch_size)
        ctx_lists = [np.flatnonzero(m) for m in contexts]
        lengths = np.array([len(x) for x in ctx_lists])
        keep = np.full(batch_size, lengths.min()) if c.equalize == "batch_min" else lengths
        keep = np.minimum(keep, self.context_len)
        context_idx = np.zeros((batch_size, self.context_len), np.int32)
        context_valid = np.zeros((batch_size, self.context_len), bool)
        target_idx = np.zeros((batch_size, c.num_targets, self.target_len), np.int32)
        target_valid = np.zeros((batch_size, c.num_targets, self.target_len), bool)
        for b in range(batch_size):
            context_idx[b, : keep[b]] = ctx_lists[b][: keep[b]]
            context_valid[b, : keep[b]] = True
            for j, t in enumerate(all_targets[b]):
                idx = np.flatnonzero(t)
                target_idx[b, j, : len(idx)] = idx
                target_valid[b, j, : len(idx)] = True
        return {
            "context_idx": context_idx,
            "context_valid": context_valid,
            "target_idx": target_idx,
            "target_valid": target_valid,
        }

    def __call__(self, index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(next(iter(batch.values())))
        return {**batch, **self.sample(index, size)}
