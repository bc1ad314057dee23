"""The I-JEPA train step: loss vs the official computation in PyTorch, padding exactness,
schedules vs the official schedulers, weight-decay groups, one compilation for many
masks, determinism.

Predictor and encoder module parity against PyTorch modules with the official names is
tests/test_convert_layouts.py::test_ijepa_encoder_and_predictor_parity; here the whole
loss (masking, per-block sequences, target normalisation, smooth L1) is compared."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sonichu_jax.config import tiny_config
from sonichu_jax.data.ijepa_masks import MaskConfig, MultiBlockMaskSampler
from sonichu_jax.train import ijepa
from sonichu_jax.train.ijepa_config import IJEPAConfig, IJEPAOptimConfig, PredictorConfig, PretrainDataConfig


def tiny(**changes) -> IJEPAConfig:
    base = dict(
        model=tiny_config(depth=1),
        predictor=PredictorConfig(width=32, depth=1),
        masks=MaskConfig(min_keep=4),
        data=PretrainDataConfig(batch_size=4),
        optim=IJEPAOptimConfig(warmup_steps=3),
        steps=20,
    )
    base.update(changes)
    return IJEPAConfig(**base)


def state_from_model(model: ijepa.IJEPA, config: IJEPAConfig):
    graphdef, params, rest = ijepa.split(model)
    state = ijepa.IJEPAState(step=jnp.zeros((), jnp.int32), frames_skipped=jnp.zeros((), jnp.int32), params=params,
                             target=jax.tree.map(jnp.copy, params["encoder"]), rest=rest,
                             opt_state=ijepa.adam(config.optim).init(params))
    return graphdef, state


# -- the loss vs the official computation -------------------------------------------------------
def load_official(model: ijepa.IJEPA, encoder, predictor) -> None:
    """Copy official-named PyTorch weights into our modules (the converter's own rules are
    tested in test_convert_layouts.py; here a plain map keeps this test independent)."""
    import torch_refs

    flat = [((part, *[int(k) if k.isdigit() else k for k in path.split("/")]), value)
            for part, module in (("encoder", encoder), ("predictor", predictor))
            for path, value in torch_refs.ijepa_arrays(module).items()
            if not path.endswith("pos_embed")]  # fixed sin-cos tables, computed on both sides
    state = nnx.state(model, nnx.Param)
    expected = {p for p, _ in nnx.to_flat_state(state)}
    assert {p for p, _ in flat} == expected
    nnx.update(model, nnx.from_flat_state([(p, nnx.Param(jnp.asarray(v))) for p, v in flat]))


def test_loss_matches_official_pytorch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import torch_refs

    config = tiny()
    cfg = config.model
    tcfg = torch_refs.torch_cfg(image_size=list(cfg.image_size), patch_size=cfg.patch_size, width=cfg.width,
                                depth=cfg.depth, num_heads=cfg.num_heads)
    encoder = torch_refs.randomize(torch_refs.Backbone(tcfg), seed=1)
    predictor = torch_refs.randomize(torch_refs.IJepaPredictor(tcfg, width=32, depth=1), seed=2)
    model = ijepa.IJEPA(cfg, 32, 1, rngs=nnx.Rngs(0))
    load_official(model, encoder, predictor)  # step 0: the target encoder is the encoder

    B = 3
    sampler = MultiBlockMaskSampler(config.masks, cfg.grid, seed=4)  # context padded to 49, targets to 12
    masks = sampler.sample(2, B)
    images = np.random.default_rng(0).normal(size=(B, *cfg.image_size, 3)).astype(np.float32)
    graphdef, state = state_from_model(model, config)
    _, metrics = jax.jit(ijepa.make_train_step(graphdef, config))(state, {"image": images, **masks})

    # the official code on the unpadded masks (lengths are equal across the batch)
    c = int(masks["context_valid"][0].sum())
    t = int(masks["target_valid"][0, 0].sum())
    ctx = torch.from_numpy(masks["context_idx"][:, :c].astype(np.int64))
    tgt = [torch.from_numpy(masks["target_idx"][:, j, :t].astype(np.int64)) for j in range(4)]
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def apply_masks(h, index_sets):
        return torch.cat([torch.gather(h, 1, m[..., None].expand(-1, -1, h.shape[-1])) for m in index_sets])

    with torch.no_grad():
        h = F.layer_norm(encoder(x), (cfg.width,))
        targets = apply_masks(h, tgt)
        tokens = apply_masks(encoder.patch_embed(x) + encoder.pos_embed, [ctx])
        for block in encoder.blocks:
            tokens = block(tokens)
        z = encoder.norm(tokens)
        preds = predictor(z.repeat(4, 1, 1), ctx.repeat(4, 1), torch.cat(tgt))
        expected = float(F.smooth_l1_loss(preds, targets))
    assert abs(float(metrics["loss"]) - expected) <= 1e-5 * expected, (float(metrics["loss"]), expected)


def test_padding_is_exact():
    """Extra padding on the context and the targets changes no real output."""
    config = tiny()
    model = ijepa.build_model(config, 0)
    sampler = MultiBlockMaskSampler(config.masks, config.model.grid, seed=1)
    masks = sampler.sample(0, 2)
    images = np.random.default_rng(1).normal(size=(2, *config.model.image_size, 3)).astype(np.float32)
    c = int(masks["context_valid"].sum(1).max())
    t = int(masks["target_valid"].sum(-1).max())
    short = {"image": images,
             "context_idx": masks["context_idx"][:, :c], "context_valid": masks["context_valid"][:, :c],
             "target_idx": masks["target_idx"][..., :t], "target_valid": masks["target_valid"][..., :t]}
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, batch: ijepa.predict_targets(nnx.merge(graphdef, state), batch))
    padded = run(state, {"image": images, **masks})
    unpadded = run(state, short)
    np.testing.assert_allclose(np.asarray(padded[:, :, :t]), np.asarray(unpadded), rtol=1e-5, atol=1e-5)


# -- schedules and optimiser groups ---------------------------------------------------------------
def official_schedules(optim: IJEPAOptimConfig, steps: int):
    """The official schedulers, stepped once per iteration before the forward pass."""
    T = int(optim.schedule_scale * steps)
    warm, out = optim.warmup_steps, []
    momenta = [optim.ema[0] + i * (optim.ema[1] - optim.ema[0]) / (steps * optim.schedule_scale)
               for i in range(int(steps * optim.schedule_scale) + 1)]
    for it in range(steps):
        s = it + 1
        if s < warm:
            lr = optim.start_lr + s / max(1, warm) * (optim.lr - optim.start_lr)
        else:
            p = (s - warm) / max(1, T - warm)
            lr = max(optim.final_lr, optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1 + math.cos(math.pi * p)))
        wd0, wd1 = optim.weight_decay, optim.final_weight_decay
        wd = min(wd1, wd1 + (wd0 - wd1) * 0.5 * (1 + math.cos(math.pi * s / T)))
        out.append((lr, wd, momenta[it]))
    return np.array(out)


@pytest.mark.parametrize("scale", [1.0, 1.25])
def test_schedules_match_official(scale):
    optim = IJEPAOptimConfig(warmup_steps=15, schedule_scale=scale)
    steps = 100
    ours = jax.vmap(lambda s: ijepa.schedules(optim, steps, s))(jnp.arange(steps))
    ref = official_schedules(optim, steps)
    np.testing.assert_allclose(np.asarray(ours["lr"]), ref[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours["wd"]), ref[:, 1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours["momentum"]), ref[:, 2], rtol=1e-6)
    assert float(ours["momentum"][0]) == pytest.approx(0.996)


def test_weight_decay_groups():
    _, params, _ = ijepa.split(ijepa.build_model(tiny(), 0))
    mask = {"/".join(map(str, p)): bool(v.get_value()) for p, v in nnx.to_flat_state(ijepa.decay_mask(params))}
    assert mask["predictor/mask_token"] and mask["encoder/blocks/0/attn/qkv/kernel"]
    assert mask["encoder/patch_embed/proj/kernel"]
    assert not mask["encoder/blocks/0/attn/qkv/bias"] and not mask["encoder/norm/scale"]
    assert not any(k.endswith("pos_embed") for k in mask)  # fixed tables are not parameters


def official_training_init(path: tuple) -> tuple[str, float]:
    """What the official training runs start from, by parameter (``src/helper.py::init_model``
    re-draws every ``nn.Linear`` weight at std 0.02 after the constructors, whose division of
    ``attn.proj`` / ``mlp.fc2`` by sqrt(2 (layer + 1)) it thereby undoes; the patch
    convolution and the mask token keep the constructors' std-0.02 draw): (kind, value)."""
    name = path[-1]
    if name == "bias":
        return "constant", 0.0  # Linear and Conv2d biases
    if name == "scale":
        return "constant", 1.0  # LayerNorm weights
    assert name in ("kernel", "mask_token"), path
    return "normal", 0.02  # every Linear, the patch Conv2d, the mask token; no depth scaling


def test_init_follows_the_official_training_runs():
    """Every parameter group against the rule above: exact constants, and for each drawn
    tensor its mean and standard deviation within five standard errors of N(0, 0.02) (a
    kept depth scaling, 1/sqrt(2) or less, lies well outside at these sizes)."""
    config = tiny(model=tiny_config(depth=3), predictor=PredictorConfig(width=32, depth=2))
    state = jax.jit(lambda: ijepa.fresh_state(config))()
    drawn = 0
    for path, var in nnx.to_flat_state(state.params):
        value = np.asarray(var.get_value(), np.float64)
        kind, expected = official_training_init(path)
        if kind == "constant":
            assert (value == expected).all(), path
            continue
        n, drawn = value.size, drawn + 1
        assert abs(value.mean()) <= 5 * expected / math.sqrt(n), path
        assert abs(value.std() / expected - 1) <= 5 / math.sqrt(2 * n), (path, value.std())
    assert drawn == 1 + 4 * 3 + 2 + 4 * 2 + 1  # patch conv, 3 encoder blocks, embed/proj, 2 blocks, mask token
    for (path, t), (_, e) in zip(nnx.to_flat_state(state.target), nnx.to_flat_state(state.params["encoder"])):
        np.testing.assert_array_equal(np.asarray(t.get_value()), np.asarray(e.get_value()), err_msg=str(path))


# -- compiled once, deterministic ------------------------------------------------------------------
def test_one_compilation_for_many_masks():
    cfg = tiny_config(image_size=(32, 32), patch_size=4, width=32, depth=1, num_heads=2)
    config = tiny(model=cfg, predictor=PredictorConfig(width=16, depth=1), steps=200)
    from sonichu_jax.train import mesh as mesh_lib

    traces = []

    def wrap(inner):
        def counted(state, batch):
            traces.append(1)
            return inner(state, batch)

        return counted

    pretrainer = ijepa.build_pretrainer(config, mesh_lib.make_mesh(), wrap=wrap)
    state, step = pretrainer.init_state(), pretrainer.step
    sampler = MultiBlockMaskSampler(config.masks, cfg.grid, seed=0)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    lengths = set()
    for i in range(200):
        masks = sampler.sample(i, 4)
        lengths.add((int(masks["context_valid"].sum()), int(masks["target_valid"].sum())))
        state, metrics = step(state, {"image": images, **masks})
    assert len(lengths) > 20  # the masks really varied
    assert len(traces) == 1 and step._cache_size() == 1
    assert int(state.step) == 200 and float(metrics["finite"]) == 1.0
