"""Plain ViT encoder (I-JEPA / ViTPose backbone), channels-last, Flax NNX.

Parameter names follow the PyTorch module tree (patch_embed/proj, blocks/i/attn/qkv, ...)
so that the converter's name rules stay one-to-one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.posembed import sincos_2d as sincos_2d_table


class FixedEmbedding(nnx.Variable):
    """A table that is part of the state (saved, converted, sharded) but never trained."""


FSDP = "fsdp"  # the mesh axis that parameters are split over (sonichu_jax.train.mesh)


def fsdp(*axes) -> dict:
    """Variable metadata: the partition spec ``axes`` (a mesh axis or None per dimension:
    FSDP on the largest one) that `nnx.get_partition_spec` reads. Nothing is placed when
    the module is built; a run, or a researcher's own code, places the state from it."""
    return {"out_sharding": axes, "eager_sharding": False}


class PatchEmbed(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pad = cfg.patch_padding
        self.proj = nnx.Conv(
            cfg.in_channels,
            cfg.width,
            kernel_size=(cfg.patch_size, cfg.patch_size),
            strides=(cfg.patch_size, cfg.patch_size),
            padding=((pad, pad), (pad, pad)),
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.float32,
            rngs=rngs,
            kernel_metadata=fsdp(None, None, None, FSDP),
            bias_metadata=fsdp(FSDP),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.proj(x)  # (B, gh, gw, D)
        return y.reshape(y.shape[0], -1, y.shape[-1])


# jax.nn.dot_product_attention's implementation per ModelConfig.attention (None: JAX
# picks, i.e. cuDNN flash attention on GPUs where the shapes allow, XLA otherwise).
_ATTENTION_IMPLEMENTATION = {"auto": None, "xla": "xla", "cudnn": "cudnn"}


def heads_major_attention(x: jax.Array, qkv: nnx.Linear, proj: nnx.Linear, num_heads: int,
                          valid: jax.Array | None) -> jax.Array:
    """Multi-head self-attention computed heads-major, (B, heads, T, head_dim), straight
    from the fused qkv and proj kernels viewed per head: no activation is reshaped or
    transposed between the projections and the two attention matmuls."""
    b, t, d = x.shape
    hd = d // num_heads
    dtype = qkv.dtype or x.dtype
    w = qkv.kernel[...].astype(dtype).reshape(d, 3, num_heads, hd)
    q, k, v = (jnp.einsum("btd,dnh->bnth", x.astype(dtype), w[:, i]) for i in range(3))
    if qkv.bias is not None:
        bias = qkv.bias[...].astype(dtype).reshape(3, num_heads, 1, hd)
        q, k, v = q + bias[0], k + bias[1], v + bias[2]
    # Logits leave the matmul in the compute dtype (what bfloat16 autocast does too): a
    # float32 result would make its gradient float32 as well, and both backward matmuls
    # then run at float32 speed. Mask and softmax stay float32.
    logits = jnp.einsum("bnth,bnsh->bnts", q * jnp.asarray(hd**-0.5, dtype), k).astype(jnp.float32)
    if valid is not None:
        logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("bnts,bnsh->bnth", probs, v)
    wp = proj.kernel[...].astype(dtype).reshape(num_heads, hd, d)
    return jnp.einsum("bnth,nhd->btd", out, wp) + proj.bias[...].astype(dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.num_heads = cfg.num_heads
        self.kind = cfg.attention
        self.qkv = nnx.Linear(cfg.width, 3 * cfg.width, use_bias=cfg.qkv_bias, dtype=dtype, rngs=rngs,
                              kernel_metadata=fsdp(None, FSDP), bias_metadata=fsdp(FSDP))
        self.proj = nnx.Linear(cfg.width, cfg.width, dtype=dtype, rngs=rngs, kernel_metadata=fsdp(FSDP, None),
                               bias_metadata=fsdp(FSDP))

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """``valid`` (B, T) bool, optional: tokens that may be attended to. Padding tokens
        (False) then change no other token's output, so a padded sequence encodes its real
        tokens exactly as the unpadded one would (I-JEPA's static-shape masks)."""
        if self.kind == "heads_major":
            return heads_major_attention(x, self.qkv, self.proj, self.num_heads, valid)
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        mask = None if valid is None else valid[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=_ATTENTION_IMPLEMENTATION[self.kind])
        return self.proj(out.reshape(b, t, d))


class Mlp(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nnx.Linear(cfg.width, hidden, dtype=dtype, rngs=rngs, kernel_metadata=fsdp(None, FSDP),
                              bias_metadata=fsdp(FSDP))
        self.fc2 = nnx.Linear(hidden, cfg.width, dtype=dtype, rngs=rngs, kernel_metadata=fsdp(FSDP, None),
                              bias_metadata=fsdp(FSDP))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def layer_norm(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs,
                         scale_metadata=fsdp(FSDP), bias_metadata=fsdp(FSDP))


class Block(nnx.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = layer_norm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = layer_norm(cfg, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.norm1(x), valid)
        return x + self.mlp(self.norm2(x))


# What a rematerialised block keeps for the backward pass (ModelConfig.remat): nothing
# but its input, or also the results of its matmuls (the elementwise work is redone).
_REMAT_POLICIES = {"block": None, "block_save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def run_blocks(blocks, x: jax.Array, valid: jax.Array | None, remat: str) -> jax.Array:
    """Apply transformer ``blocks`` in turn, each rematerialised as ``remat`` says."""
    if remat == "none":
        for block in blocks:
            x = block(x, valid)
        return x
    apply = nnx.remat(lambda block, x, valid: block(x, valid), policy=_REMAT_POLICIES[remat])
    for block in blocks:
        x = apply(block, x, valid)
    return x


class VisionTransformer(nnx.Module):
    """Patch embedding + position table + pre-LN blocks + final LayerNorm; no class token.

    Position table kinds: ``sincos`` (fixed, not trained), ``learned`` (N, D) and
    ``learned_cls_folded`` (N + 1, D, the ViTPose layout whose class slot is added to every
    patch token).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        n = cfg.num_patches
        if cfg.pos_embed == "sincos":
            self.pos_embed = FixedEmbedding(jnp.asarray(sincos_2d_table(cfg.width, cfg.grid))[None], **fsdp(None, None, FSDP))
        else:
            slots = n + 1 if cfg.pos_embed == "learned_cls_folded" else n
            init = nnx.initializers.truncated_normal(stddev=0.02)
            self.pos_embed = nnx.Param(init(rngs.params(), (1, slots, cfg.width), jnp.float32), **fsdp(None, None, FSDP))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm = layer_norm(cfg, rngs=rngs)

    def position_table(self) -> jax.Array:
        """(1, N, D) table added to the patch tokens."""
        table = self.pos_embed[...]
        if self.cfg.pos_embed == "learned_cls_folded":
            table = table[:, 1:] + table[:, :1]
        return table

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """(B, H, W, C) images -> (B, N, D) position-encoded patch tokens."""
        x = pixel_values.astype(jnp.dtype(self.cfg.dtype))
        tokens = self.patch_embed(x)
        if tokens.shape[1] != self.cfg.num_patches:
            raise ValueError(
                f"input of spatial size {pixel_values.shape[1:3]} gives {tokens.shape[1]} patches; "
                f"the model expects {self.cfg.image_size} ({self.cfg.num_patches} patches)"
            )
        return tokens + self.position_table().astype(tokens.dtype)

    def encode_tokens(self, tokens: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        return self.norm(run_blocks(self.blocks, tokens, valid, self.cfg.remat))

    def __call__(self, pixel_values: jax.Array, keep: jax.Array | None = None,
                 valid: jax.Array | None = None) -> jax.Array:
        """Encode images; with ``keep`` (B, M) int indices, only those tokens are encoded
        (I-JEPA context encoder), and ``valid`` (B, M) bool marks which of them are real
        (the others are padding that no real token attends to). Returns (B, N or M, D)."""
        tokens = self.embed(pixel_values)
        if keep is not None:
            tokens = jnp.take_along_axis(tokens, keep[..., None].astype(jnp.int32), axis=1)
        return self.encode_tokens(tokens, valid)
