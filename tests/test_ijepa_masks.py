"""The I-JEPA multi-block mask sampler against an independent, straightforward
re-implementation of the reference algorithm (facebookresearch/ijepa MaskCollator as
described in docs/ijepa.md), plus the properties the train step relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sonichu_jax.data.ijepa_masks import (
    MaskConfig,
    MaskSamplingError,
    MultiBlockMaskSampler,
    block_size,
    possible_sizes,
)

GRID = (16, 16)


# -- the reference algorithm, written out plainly ------------------------------------------
def ref_block_size(r, scale, aspect, H, W):
    keep = int(H * W * (scale[0] + r * (scale[1] - scale[0])))
    ar = aspect[0] + r * (aspect[1] - aspect[0])
    h, w = int(round(math.sqrt(keep * ar))), int(round(math.sqrt(keep / ar)))
    while h >= H:
        h -= 1
    while w >= W:
        w -= 1
    return h, w


def ref_block_mask(rng, size, H, W, min_keep, regions=None):
    h, w = size
    tries, timeout = 0, 20
    while True:
        top, left = rng.integers(0, H - h), rng.integers(0, W - w)
        m = np.zeros((H, W), np.int32)
        m[top : top + h, left : left + w] = 1
        if regions is not None:
            for k in range(max(len(regions) - tries, 0)):
                m *= regions[k]
        idx = np.nonzero(m.flatten())[0]
        if len(idx) > min_keep:
            break
        timeout -= 1
        if timeout == 0:
            tries, timeout = tries + 1, 20
    comp = np.ones((H, W), np.int32)
    comp[top : top + h, left : left + w] = 0
    return idx, comp


def ref_collate(rng, B, cfg: MaskConfig, H, W):
    """(per-image target index lists, per-image context index list), lengths cut to the
    batch minimum, and the per-image context lengths before the cut."""
    r_pred, r_enc = rng.random(), rng.random()
    p_size = ref_block_size(r_pred, cfg.target_scale, cfg.aspect, H, W)
    e_size = ref_block_size(r_enc, cfg.context_scale, (1.0, 1.0), H, W)
    preds, encs = [], []
    for _ in range(B):
        masks, comps = [], []
        for _ in range(cfg.num_targets):
            idx, comp = ref_block_mask(rng, p_size, H, W, cfg.min_keep)
            masks.append(idx)
            comps.append(comp)
        preds.append(masks)
        encs.append(ref_block_mask(rng, e_size, H, W, cfg.min_keep, None if cfg.allow_overlap else comps)[0])
    raw = [len(e) for e in encs]
    kp, ke = min(len(m) for ms in preds for m in ms), min(raw)
    return [[m[:kp] for m in ms] for ms in preds], [e[:ke] for e in encs], raw, p_size


def coverage(index_lists, H, W):
    grid = np.zeros(H * W)
    for idx in index_lists:
        grid[idx] += 1
    return (grid / len(index_lists)).reshape(H, W)


# -- block sizes -----------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(16, 16), (8, 8), (14, 10)])
def test_possible_sizes_are_exact(grid):
    cfg = MaskConfig()
    dense = np.linspace(0.0, 1.0, 200001)[:-1]
    for scale, aspect in ((cfg.target_scale, cfg.aspect), (cfg.context_scale, (1.0, 1.0))):
        ref = {ref_block_size(r, scale, aspect, *grid) for r in dense}
        assert possible_sizes(scale, aspect, grid, "official") == ref
        for r in dense[::997]:
            assert block_size(r, scale, aspect, grid, "official") == ref_block_size(r, scale, aspect, *grid)


def test_block_size_distribution_matches_reference():
    cfg = MaskConfig()
    sampler = MultiBlockMaskSampler(cfg, GRID, seed=3)
    ours = [sampler.sizes(step)[0] for step in range(3000)]
    rng = np.random.default_rng(0)
    ref = [ref_block_size(rng.random(), cfg.target_scale, cfg.aspect, *GRID) for _ in range(3000)]
    for size in set(ours) | set(ref):
        assert abs(ours.count(size) - ref.count(size)) / 3000 < 0.04, size
    # the context block at 16 x 16: 15 x 15 or 16 x 16 before the shrink, always 15 x 15 after
    assert {sampler.sizes(step)[1] for step in range(200)} == {(15, 15)}
    assert sampler.target_len == max(h * w for h, w in set(ref))


# -- official mode vs the reference algorithm --------------------------------------------------
def _ours(cfg, steps, B, grid=GRID, seed=0):
    sampler = MultiBlockMaskSampler(cfg, grid, seed=seed)
    targets, contexts, raw = [], [], []
    for step in range(steps):
        all_t, ctx = sampler.sample_blocks(step, B)
        raw += [int(c.sum()) for c in ctx]
        m = sampler.sample(step, B)
        for b in range(B):
            contexts.append(m["context_idx"][b][m["context_valid"][b]])
            targets += [m["target_idx"][b, j][m["target_valid"][b, j]] for j in range(cfg.num_targets)]
    return targets, contexts, np.array(raw)


def test_official_statistics_match_reference():
    cfg, steps, B = MaskConfig(), 300, 8
    t_ours, c_ours, raw_ours = _ours(cfg, steps, B)
    rng = np.random.default_rng(1)
    t_ref, c_ref, raw_ref = [], [], []
    for _ in range(steps):
        preds, encs, raw, _ = ref_collate(rng, B, cfg, *GRID)
        t_ref += [m for ms in preds for m in ms]
        c_ref += encs
        raw_ref += raw
    raw_ref = np.array(raw_ref)
    # context sizes, before and after the cut to the batch minimum
    assert abs(raw_ours.mean() - raw_ref.mean()) < 5, (raw_ours.mean(), raw_ref.mean())
    assert abs(raw_ours.std() - raw_ref.std()) < 5
    cut_ours, cut_ref = np.array([len(c) for c in c_ours]), np.array([len(c) for c in c_ref])
    assert abs(cut_ours.mean() - cut_ref.mean()) < 6, (cut_ours.mean(), cut_ref.mean())
    assert abs(np.mean([len(t) for t in t_ours]) - np.mean([len(t) for t in t_ref])) < 1.5
    # coverage maps: where targets and contexts fall
    for ours, ref in ((t_ours, t_ref), (c_ours, c_ref)):
        cov_o, cov_r = coverage(ours, *GRID), coverage(ref, *GRID)
        assert np.abs(cov_o - cov_r).max() < 0.07
        # the reference bug, reproduced: the last row and column are never masked
        assert cov_o[-1].max() == 0 and cov_o[:, -1].max() == 0
        assert cov_r[-1].max() == 0 and cov_r[:, -1].max() == 0


def test_batch_min_cut_keeps_raster_prefix():
    sampler = MultiBlockMaskSampler(MaskConfig(), GRID, seed=5)
    all_t, ctx = sampler.sample_blocks(7, 6)
    m = sampler.sample(7, 6)
    lengths = m["context_valid"].sum(1)
    assert (lengths == min(int(c.sum()) for c in ctx)).all()
    for b in range(6):
        full = np.flatnonzero(ctx[b])
        np.testing.assert_array_equal(m["context_idx"][b, : lengths[b]], full[: lengths[b]])
        assert (m["context_idx"][b, lengths[b] :] == 0).all()
        for j, t in enumerate(all_t[b]):
            np.testing.assert_array_equal(m["target_idx"][b, j][m["target_valid"][b, j]], np.flatnonzero(t))


@pytest.mark.parametrize("mode", ["official", "fixed"])
def test_context_never_contains_a_target(mode):
    cfg = MaskConfig(mode=mode, equalize="none")
    sampler = MultiBlockMaskSampler(cfg, GRID, seed=11)
    for step in range(40):
        m = sampler.sample(step, 16)
        for b in range(16):
            ctx = set(m["context_idx"][b][m["context_valid"][b]].tolist())
            tgt = set(m["target_idx"][b][m["target_valid"][b]].tolist())
            assert ctx and not ctx & tgt


def test_static_shapes_across_steps():
    cfg = MaskConfig(context_len=96)
    sampler = MultiBlockMaskSampler(cfg, GRID)
    shapes = {tuple((k, v.shape, v.dtype.str) for k, v in sorted(sampler.sample(s, 4).items())) for s in range(30)}
    assert len(shapes) == 1
    m = sampler.sample(0, 4)
    assert m["context_idx"].shape == (4, 96) and m["target_idx"].shape == (4, 4, sampler.target_len)
    assert m["context_valid"].sum(1).max() <= 96
    assert MultiBlockMaskSampler(MaskConfig(context_len=1000), GRID).context_len == 225  # never beyond the max


def test_fixed_mode_covers_the_whole_grid():
    cfg = MaskConfig(mode="fixed")
    targets, contexts, _ = _ours(cfg, 150, 8)
    cov_t, cov_c = coverage(targets, *GRID), coverage(contexts, *GRID)
    assert cov_t[-1].min() > 0 and cov_t[:, -1].min() > 0
    assert cov_c[-1].min() > 0 and cov_c[:, -1].min() > 0
    assert MultiBlockMaskSampler(cfg, GRID).max_context == 256  # a 16 x 16 context block is possible


def test_deterministic_and_host_aware():
    cfg = MaskConfig()
    a, b = MultiBlockMaskSampler(cfg, GRID, seed=1), MultiBlockMaskSampler(cfg, GRID, seed=1)
    for k, v in a.sample(4, 8).items():
        np.testing.assert_array_equal(v, b.sample(4, 8)[k])
    assert not np.array_equal(a.sample(4, 8)["target_idx"], a.sample(5, 8)["target_idx"])
    other_host = MultiBlockMaskSampler(cfg, GRID, seed=1, process_index=1)
    assert all(a.sizes(s) == other_host.sizes(s) for s in range(20))  # shared block sizes
    assert not np.array_equal(a.sample(4, 8)["target_idx"], other_host.sample(4, 8)["target_idx"])
    # as a grain map_with_index transform: masks keyed by the batch index
    batch = {"image": np.zeros((8, 2, 2, 3), np.float32)}
    out = a(4, batch)
    assert out["image"] is batch["image"]
    np.testing.assert_array_equal(out["target_idx"], b.sample(4, 8)["target_idx"])


# -- small grids: clear errors instead of endless loops ----------------------------------------
def test_never_valid_block_is_rejected_up_front():
    # 8 x 8 grid: target blocks of 3 x 3 = 9 patches can never exceed min_keep=10 (#68)
    for mode in ("official", "fixed"):
        with pytest.raises(MaskSamplingError, match="min_keep"):
            MultiBlockMaskSampler(MaskConfig(mode=mode), (8, 8))
    with pytest.raises(MaskSamplingError, match="2 x 2"):
        MultiBlockMaskSampler(MaskConfig(min_keep=0), (1, 4))


def test_fixed_mode_errors_when_targets_leave_no_context():
    # a target covering the whole grid leaves no context. Official relaxes the no-overlap
    # rule (its context then overlaps the target); fixed mode says why it cannot cope.
    cfg = MaskConfig(target_scale=(1.0, 1.0), aspect=(1.0, 1.0), context_scale=(1.0, 1.0), num_targets=1, min_keep=2)
    with pytest.raises(MaskSamplingError, match="no context block"):
        MultiBlockMaskSampler(MaskConfig(**{**cfg.__dict__, "mode": "fixed"}), (4, 4)).sample(0, 2)
    m = MultiBlockMaskSampler(cfg, (4, 4)).sample(0, 2)  # official terminates (by relaxing)
    assert m["context_valid"].sum(1).min() > 2
    assert set(m["context_idx"][0][m["context_valid"][0]]) & set(m["target_idx"][0, 0][m["target_valid"][0, 0]])
