"""The I-JEPA model, train state, jitted step and its builder, as the official loop:
schedules from the step counter, forward, backward, AdamW, then the EMA update of the
target encoder. Parameters are float32; the target normalisation, loss and optimiser run
in float32 (docs/ijepa.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from sonichu_jax.config import ModelConfig
from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
from sonichu_jax.errors import InputError
from sonichu_jax.nn.predictor import Predictor
from sonichu_jax.nn.vit import VisionTransformer
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.ijepa_config import IJEPAConfig, IJEPAOptimConfig
from sonichu_jax.train.guard import keep_if_finite
from sonichu_jax.train.optim import decays, path_keys

# "skipped": per image, the undecodable frames the pipeline replaced to fill its slot
BATCH_KEYS = ("image", "context_idx", "context_valid", "target_idx", "target_valid", "skipped")
TARGET_LN_EPS = 1e-5  # F.layer_norm's default in the official target path
INIT_STD = 0.02


class IJEPA(nnx.Module):
    """Context encoder + predictor: the trained part. The target encoder is not a module
    of its own: it is the encoder's graph merged with the EMA parameters."""

    def __init__(self, cfg: ModelConfig, predictor_width: int, predictor_depth: int, *, rngs: nnx.Rngs):
        self.encoder = VisionTransformer(cfg, rngs=rngs)
        self.predictor = Predictor(cfg, predictor_width, predictor_depth, rngs=rngs)


def ijepa_init(model: IJEPA, key: jax.Array) -> None:
    """The official runs' initialisation, in place: every kernel and the mask token
    N(0, 0.02), biases 0, norms (1, 0), no depth scaling (docs/ijepa.md). One normal draw
    covers every tensor: a draw per tensor made the initialiser 5x slower to compile."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    drawn = [var.get_value().size for path, var in flat if path[-1] in ("kernel", "mask_token")]
    noise = INIT_STD * jax.random.normal(key, (sum(drawn),), jnp.float32)
    out, offset = [], 0
    for path, var in flat:
        value = var.get_value()
        if path[-1] == "bias":
            value = jnp.zeros_like(value)
        elif path[-1] == "scale":
            value = jnp.ones_like(value)
        elif path[-1] in ("kernel", "mask_token"):
            value = noise[offset : offset + value.size].reshape(value.shape).astype(value.dtype)
            offset += value.size
        out.append((path, var.replace(value)))
    nnx.update(model, nnx.from_flat_state(out))


def build_model(config: IJEPAConfig, seed: int) -> IJEPA:
    model = IJEPA(config.model, config.predictor.width, config.predictor.depth, rngs=nnx.Rngs(seed))
    ijepa_init(model, jax.random.key(seed))
    return model


# -- schedules (official WarmupCosineSchedule / CosineWDSchedule / momentum generator) -----
def schedules(optim: IJEPAOptimConfig, total_steps: int, step: jax.Array) -> dict[str, jax.Array]:
    """lr, weight decay and EMA momentum of iteration ``step`` (0-based): lr and wd at
    ``step + 1`` (the official schedulers step before the forward pass), momentum at ``step``."""
    length = float(int(optim.schedule_scale * total_steps))
    t = step.astype(jnp.float32) + 1.0
    warm = float(optim.warmup_steps)
    warm_lr = optim.start_lr + t / max(1.0, warm) * (optim.lr - optim.start_lr)
    progress = (t - warm) / max(1.0, length - warm)
    cos_lr = optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    lr = jnp.where(t < warm, warm_lr, jnp.maximum(optim.final_lr, cos_lr))
    wd0, wd1 = optim.weight_decay, optim.final_weight_decay
    wd = wd1 + (wd0 - wd1) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / length))
    wd = jnp.maximum(wd1, wd) if wd1 <= wd0 else jnp.minimum(wd1, wd)
    m0, m1 = optim.ema
    momentum = m0 + step.astype(jnp.float32) * (m1 - m0) / (optim.schedule_scale * total_steps)
    return {"lr": lr, "wd": wd, "momentum": momentum}


# -- state ---------------------------------------------------------------------------------
@struct.dataclass
class IJEPAState:
    step: jax.Array  # int32 scalar: iterations done
    frames_skipped: jax.Array  # int32 scalar: undecodable frames replaced by other draws so far
    params: nnx.State  # trained: {"encoder": ..., "predictor": ...}
    target: nnx.State  # EMA of params["encoder"]
    rest: nnx.State  # non-trained variables: the fixed sin-cos tables
    opt_state: optax.OptState


def adam(optim: IJEPAOptimConfig) -> optax.GradientTransformation:
    """The Adam direction; lr and the scheduled, masked weight decay are applied in the step."""
    return optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps)


def decay_mask(params) -> nnx.State:
    """Official param groups: no weight decay on biases and 1-D parameters."""
    return jax.tree_util.tree_map_with_path(lambda p, x: decays(path_keys(p), x.ndim), params)


def split(model: IJEPA) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    return nnx.split(model, nnx.Param, ...)


def fresh_state(config: IJEPAConfig) -> IJEPAState:
    """Step 0 (traceable): the official initialisation, the target a copy of the encoder."""
    _, params, rest = split(build_model(config, config.seed))
    zero = jnp.zeros((), jnp.int32)
    return IJEPAState(step=zero, frames_skipped=zero, params=params, target=jax.tree.map(jnp.copy, params["encoder"]),
                      rest=rest, opt_state=adam(config.optim).init(params))


# -- the step --------------------------------------------------------------------------------
def target_features(graphdef, state: IJEPAState, images: jax.Array) -> jax.Array:
    """Full-image target encoder output, normalised over features in float32: (B, N, D)."""
    params = nnx.State({"encoder": state.target, "predictor": state.params["predictor"]})
    h = nnx.merge(graphdef, params, state.rest).encoder(images).astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    return jax.lax.stop_gradient((h - mean) * jax.lax.rsqrt(var + TARGET_LN_EPS))


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """(B, N, D) tokens at (B, ...) indices -> (B, ..., D)."""
    flat = idx.reshape(idx.shape[0], -1).astype(jnp.int32)
    out = jnp.take_along_axis(x, flat[..., None], axis=1)
    return out.reshape(*idx.shape, x.shape[-1])


def predict_targets(model: IJEPA, batch) -> jax.Array:
    """Context encoder + predictor: (B, M, T, D) predictions, one sequence per block."""
    ctx_idx, ctx_valid = batch["context_idx"], batch["context_valid"]
    tgt_idx, tgt_valid = batch["target_idx"], batch["target_valid"]
    b, m, t = tgt_idx.shape
    z = model.encoder(batch["image"], keep=ctx_idx, valid=ctx_valid)  # (B, C, D)

    def per_block(x):  # (B, ...) -> (B * M, ...), block-major within each image
        return jnp.repeat(x[:, None], m, axis=1).reshape(b * m, *x.shape[1:])

    pred = model.predictor(
        per_block(z), per_block(ctx_idx), tgt_idx.reshape(b * m, t),
        context_valid=per_block(ctx_valid), target_valid=tgt_valid.reshape(b * m, t),
    )
    return pred.reshape(b, m, t, -1)


def make_train_step(graphdef, config: IJEPAConfig):
    """``step(state, batch) -> (state, metrics)``; jit it with the state donated."""
    optim = config.optim
    tx = adam(optim)

    def loss_fn(params, state: IJEPAState, batch, h):
        model = nnx.merge(graphdef, params, state.rest)
        pred = predict_targets(model, batch)
        target = gather_tokens(h, batch["target_idx"])
        weight = batch["target_valid"].astype(jnp.float32)[..., None]
        diff = pred.astype(jnp.float32) - target
        # smooth L1 with beta 1 (Huber): 0.5 d^2 below 1, |d| - 0.5 above
        per_elem = jnp.square(diff) if optim.loss == "l2" else optax.huber_loss(diff)
        loss = (per_elem * weight).sum() / jnp.maximum(weight.sum() * pred.shape[-1], 1.0)
        return loss, pred

    def step(state: IJEPAState, batch) -> tuple[IJEPAState, dict]:
        sched = schedules(optim, config.steps, state.step)
        h = target_features(graphdef, state, batch["image"])
        (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch, h)
        direction, opt_state = tx.update(grads, state.opt_state, state.params)
        mask = decay_mask(state.params)
        new_params = jax.tree.map(
            lambda p, d, decay: p - sched["lr"] * (d + jnp.where(decay, sched["wd"], 0.0) * p),
            state.params, direction, mask,
        )
        mom = sched["momentum"]
        new_target = jax.tree.map(lambda t, p: mom * t + (1.0 - mom) * p, state.target, new_params["encoder"])
        grad_norm = optax.tree.norm(grads)
        skipped = state.frames_skipped
        if "skipped" in batch:  # absent from batches made by hand (tests, benchmarks)
            skipped = skipped + batch["skipped"].sum().astype(jnp.int32)
        candidate = IJEPAState(step=state.step + 1, frames_skipped=skipped, params=new_params, target=new_target,
                               rest=state.rest, opt_state=opt_state)
        new_state, finite, param_norm = keep_if_finite(state, candidate, loss, grad_norm)
        metrics = {
            "loss": loss,
            **sched,
            "grad_norm": grad_norm,
            # collapse indicator: spread of the normalised target features across tokens
            # and images (LayerNorm fixes each token's spread, not this one)
            "target_std": h.std(axis=(0, 1)).mean(),
            "pred_std": jax.lax.stop_gradient(pred).astype(jnp.float32).std(axis=(0, 1, 2)).mean(),
            "context_len": batch["context_valid"].sum(-1).astype(jnp.float32).mean(),
            "target_len": batch["target_valid"].sum(-1).astype(jnp.float32).mean(),
            "param_norm": param_norm,
            "frames_skipped": new_state.frames_skipped.astype(jnp.float32),
            "finite": finite,
        }
        return new_state, metrics

    return step


# -- the builder ---------------------------------------------------------------------------
@dataclass
class Pretrainer:
    """An I-JEPA run's program on a mesh (abstract ``state`` and ``batch`` with their
    shardings); ``sampler`` fixes the batch's static mask lengths."""

    config: IJEPAConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    sampler: MultiBlockMaskSampler
    state: IJEPAState
    batch: dict
    step: Callable  # jitted ``step(state, batch) -> (state, metrics)``, state donated
    aux: tuple = ()  # no further step inputs

    def lower(self):
        return self.step.lower(self.state, self.batch)

    def init_state(self, start=None) -> IJEPAState:
        """The step-0 state written into its shardings by one jitted initialiser: fresh, or
        with the weights of ``start`` (`ijepa_start.StartWeights`) entering as donated
        arguments, so each device holds only its shards, once."""
        shardings = jax.tree.map(lambda x: x.sharding, self.state)
        if start is None:
            return jax.jit(lambda: fresh_state(self.config), out_shardings=shardings)()
        placed = place_weights(self.state, start)
        init = jax.jit(lambda loaded: state_from_weights(self.config, loaded), out_shardings=shardings,
                       donate_argnums=0)
        return init(placed)


# -- a state from given weights (continuing from a published checkpoint) -------------------
def state_key(path) -> str:
    """``params/encoder/blocks/0/attn/qkv/kernel``: a leaf of an IJEPAState by name."""
    return "/".join([path[0].name, *map(str, path_keys(path[1:]))])


def place_weights(abstract: IJEPAState, start) -> dict[str, jax.Array]:
    """The host arrays of ``start`` placed as ``abstract`` lays them out, by `state_key`
    (no optimiser state; no predictor where ``start`` has none)."""
    sources = {"params/encoder": start.encoder, "rest/encoder": start.encoder, "target": start.target,
               "params/predictor": start.predictor, "rest/predictor": start.predictor}
    placed = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        key = state_key(path)
        prefix, name = next(((p, key[len(p) + 1 :]) for p in sources if key.startswith(p + "/")), (None, None))
        if prefix is None or sources[prefix] is None:
            continue
        value = np.asarray(sources[prefix][name], leaf.dtype)
        if value.shape != leaf.shape:
            raise InputError(f"initial weights {prefix}/{name}: shape {value.shape}, the model needs {leaf.shape}")
        placed[key] = jax.make_array_from_callback(leaf.shape, leaf.sharding, lambda index, v=value: v[index])
    return placed


def state_from_weights(config: IJEPAConfig, loaded: dict[str, jax.Array]) -> IJEPAState:
    """Step 0 with the ``loaded`` leaves, everything else fresh (traced: XLA drops the
    draws they replace)."""
    fresh = fresh_state(config)
    return jax.tree_util.tree_map_with_path(lambda path, x: loaded.get(state_key(path), x), fresh)


def abstract_batch(config: IJEPAConfig, sampler: MultiBlockMaskSampler, mesh: jax.sharding.Mesh) -> dict:
    """Shapes, dtypes and shardings of one global batch (`BATCH_KEYS`)."""
    b, m, (h, w) = config.data.batch_size, config.masks.num_targets, config.model.image_size
    c, t = sampler.context_len, sampler.target_len
    shapes = {"image": ((b, h, w, 3), jnp.float32), "context_idx": ((b, c), jnp.int32),
              "context_valid": ((b, c), jnp.bool_), "target_idx": ((b, m, t), jnp.int32),
              "target_valid": ((b, m, t), jnp.bool_), "skipped": ((b,), jnp.int32)}
    sharding = mesh_lib.batch_sharding(mesh)
    return {key: jax.ShapeDtypeStruct(*shapes[key], sharding=sharding) for key in BATCH_KEYS}


def build_pretrainer(config: IJEPAConfig, mesh: jax.sharding.Mesh, wrap: Callable | None = None) -> Pretrainer:
    """The program of ``config`` on ``mesh``, allocating nothing; ``wrap`` wraps the step
    before ``jit`` (tests count traces)."""
    model = nnx.eval_shape(lambda: IJEPA(config.model, config.predictor.width, config.predictor.depth,
                                         rngs=nnx.Rngs(0)))
    graphdef = split(model)[0]
    abstract = jax.eval_shape(lambda: fresh_state(config))
    shardings = mesh_lib.state_shardings(mesh, abstract)
    step = mesh_lib.jit_step(make_train_step(graphdef, config), mesh, shardings, wrap=wrap,
                             collective_matmul=config.mesh.collective_matmul)
    sampler = MultiBlockMaskSampler(config.masks, config.model.grid, config.seed, jax.process_index())
    return Pretrainer(config, mesh, graphdef, sampler, mesh_lib.abstract_with_shardings(abstract, shardings),
                      abstract_batch(config, sampler, mesh), step)
