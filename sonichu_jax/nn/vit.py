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
    """Variable metadata: the partition spec ``axes`` (FSDP on the largest dimension) that
    `nnx.get_partition_spec` reads; nothing is placed when the module is built."""
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
# What `auto` becomes on the platform a step compiles for (docs/scaling.md has the
# measurements); elsewhere (GPUs) it stays jax.nn.dot_product_attention's own choice.
AUTO_ATTENTION = {"tpu": "splash", "cpu": "heads_major"}


def target_platform() -> str:
    """The platform the traced computation compiles for: that of the mesh it is traced
    under (the training steps set it, `train.mesh.on_mesh`, also when a plan compiles
    for a TPU slice on a CPU host), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def resolve_attention(kind: str, platform: str) -> str:
    return AUTO_ATTENTION.get(platform, kind) if kind == "auto" else kind


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None) -> jax.Array:
    """(B, heads, T, head_dim) scaled q, k, v -> the same shape; padding keys masked."""
    # Logits leave the matmul in the compute dtype (what bfloat16 autocast does too): a
    # float32 result would make its gradient float32 as well, and both backward matmuls
    # then run at float32 speed. Mask and softmax stay float32.
    logits = jnp.einsum("bnth,bnsh->bnts", q, k).astype(jnp.float32)
    if valid is not None:
        logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bnts,bnsh->bnth", jax.nn.softmax(logits, axis=-1).astype(q.dtype), v)


def splash_length(tokens: int) -> tuple[int, int]:
    """(padded length, block) of a sequence in the splash kernel: whole sequences of up to
    1024 tokens in one block, padded to the kernel's 128 lanes; longer ones in blocks of 512."""
    size = -(-tokens // 128) * 128
    block = size if size <= 1024 else 512
    return -(-size // block) * block, block


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array | None) -> jax.Array:
    """`softmax_attention` as Pallas's TPU splash attention kernel, which keeps the logits
    on chip (interpreted off TPU, for tests). Tokens are padded to `splash_length`;
    segment ids keep padding keys out of every real token's softmax. Under a mesh the
    kernel runs per device on its share of the batch (`shard_map`)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, n, t, _ = q.shape
    size, block = splash_length(t)
    segments = None  # every token attends to every token
    if valid is not None or size > t:  # padding: segment 0, never a real token's
        segments = jnp.ones((b, t), jnp.int32) if valid is None else valid.astype(jnp.int32)
        segments = jnp.pad(segments, ((0, 0), (0, size - t)))
    q, k, v = (jnp.pad(a, ((0, 0), (0, 0), (0, size - t), (0, 0))) for a in (q, k, v))
    # q, k and v with the tokens minor: 128 lanes of tokens rather than 32 or 64 of
    # head_dim (the lanes of a TPU array) halve to quarter the bytes they take in HBM.
    # One backward kernel computes dq, dk and dv from one read of its inputs.
    minor = splash.QKVLayout.SEQ_MINOR
    blocks = splash.BlockSizes(block, block, block, block, block, block, use_fused_bwd_kernel=True,
                               q_layout=minor, k_layout=minor, v_layout=minor)
    platform = target_platform()

    def per_device(q, k, v, segments):
        kernel = splash.make_splash_mha(splash.MultiHeadMask([splash.FullMask((size, size))] * n), block_sizes=blocks,
                                        head_shards=1, q_seq_shards=1, interpret=platform != "tpu")
        ids = lambda s: None if s is None else splash.SegmentIds(s, s)  # noqa: E731
        return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=ids(s)))(q, k, v, segments)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        batch = jax.sharding.PartitionSpec(mesh.axis_names)
        per_device = jax.shard_map(per_device, in_specs=batch, out_specs=batch, check_vma=False)
    return per_device(q, k, v, segments)[:, :, :t]


def heads_major_attention(x: jax.Array, qkv: nnx.Linear, proj: nnx.Linear, num_heads: int,
                          valid: jax.Array | None, splash: bool = False) -> jax.Array:
    """Multi-head self-attention computed heads-major, (B, heads, T, head_dim), straight
    from the fused qkv and proj kernels viewed per head: no activation is reshaped or
    transposed between the projections and the softmax (or ``splash``) attention."""
    b, t, d = x.shape
    if splash:  # pad the tokens the kernel needs before the projections: no copies of q, k, v
        size = splash_length(t)[0]
        x = jnp.pad(x, ((0, 0), (0, size - t), (0, 0)))
        valid = jnp.pad(jnp.ones((b, t), bool) if valid is None else valid, ((0, 0), (0, size - t)))
    hd = d // num_heads
    dtype = qkv.dtype or x.dtype
    w = qkv.kernel[...].astype(dtype).reshape(d, 3, num_heads, hd)
    q, k, v = (jnp.einsum("btd,dnh->bnth", x.astype(dtype), w[:, i]) for i in range(3))
    wp = proj.kernel[...].astype(dtype).reshape(num_heads, hd, d)
    out_bias = proj.bias[...].astype(dtype)
    if qkv.bias is not None:
        # No token-wide reductions of dk and dv for their biases: k's shifts all of a query's
        # logits alike (the softmax ignores it), v's passes through it (rows sum to one) into proj's.
        bias = qkv.bias[...].astype(dtype).reshape(3, num_heads, hd)
        q = q + bias[0][:, None]
        out_bias = out_bias + jnp.einsum("nh,nhd->d", bias[2], wp)
    out = (splash_attention if splash else softmax_attention)(q * jnp.asarray(hd**-0.5, dtype), k, v, valid)
    return (jnp.einsum("bnth,nhd->btd", out, wp) + out_bias)[:, :t]


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
        kind = resolve_attention(self.kind, target_platform())
        if kind in ("heads_major", "splash"):
            return heads_major_attention(x, self.qkv, self.proj, self.num_heads, valid, kind == "splash")
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        mask = None if valid is None else valid[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=_ATTENTION_IMPLEMENTATION[kind])
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
    def call(block, x, valid):
        return block(x, valid)

    apply = call if remat == "none" else nnx.remat(call, policy=_REMAT_POLICIES[remat])
    x = batch_sharded(x)
    for block in blocks:
        x = apply(block, x, valid)
    return x


def batch_sharded(x: jax.Array) -> jax.Array:
    """``x`` split over every device of the mesh along its leading (batch) axis, whole
    along the others. Where parameters are split (``mesh.fsdp``), this makes the
    partitioner gather the parameters rather than whole batches of activations."""
    mesh = jax.sharding.get_abstract_mesh()
    return x if mesh.empty else jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(mesh.axis_names))


class VisionTransformer(nnx.Module):
    """Patch embedding + position table (``cfg.pos_embed``; docs/architecture.md) + pre-LN
    blocks + final LayerNorm; no class token."""

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
