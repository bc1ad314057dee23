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
    state = ijepa.IJEPAState(step=jnp.zeros((), jnp.int32), params=params,
                             target=jax.tree.map(jnp.copy, params["encoder"]), rest=rest,
                             opt_state=ijepa.adam(config.optim).init(params))
    return graphdef, state


# -- the loss vs the official computation -------------------------------------------------------
def load_official(model: ijepa.IJEPA, encoder, predictor) -> None:
    """Copy official-named PyTorch weights into our modules (the converter's own rules are
    tested in test_convert_layouts.py; here a plain map keeps this test independent)."""
    renames = {"predictor_embed": "embed", "predictor_blocks": "blocks", "predictor_norm": "norm",
               "predictor_proj": "proj"}
    flat = []
    for part, module in (("encoder", encoder), ("predictor", predictor)):
        for name, tensor in module.state_dict().items():
            if name.endswith("pos_embed"):
                continue  # fixed sin-cos tables, computed on both sides
            value = tensor.numpy()
            keys = [renames.get(k, k) for k in name.split(".")]
            if keys[-1] == "weight" and value.ndim == 4:
                keys[-1], value = "kernel", value.transpose(2, 3, 1, 0)
            elif keys[-1] == "weight" and value.ndim == 2:
                keys[-1], value = "kernel", value.T
            elif keys[-1] == "weight":
                keys[-1] = "scale"
            flat.append(((part, *[int(k) if k.isdigit() else k for k in keys]), value))
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


def test_official_init_rescales_residual_branches():
    model = ijepa.build_model(tiny(model=tiny_config(depth=3)), 0)
    stds = [float(jnp.std(model.encoder.blocks[i].mlp.fc2.kernel[...])) for i in range(3)]
    for i, s in enumerate(stds):
        assert s == pytest.approx(0.02 / math.sqrt(2 * (i + 1)), rel=0.1)
    assert float(jnp.abs(model.encoder.blocks[0].attn.qkv.bias[...]).max()) == 0.0


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
