"""The I-JEPA predictor, Flax NNX (Assran et al. 2023, facebookresearch/ijepa): a narrow
transformer over the embedded context tokens and one mask token per target position
(docs/checkpoints.md, "I-JEPA"); names follow the official module's, one-to-one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.vit import (FSDP, Block, FixedEmbedding, batch_sharded, fsdp, layer_norm, run_blocks,
                               sincos_2d_table)


def predictor_config(cfg: ModelConfig, width: int, depth: int) -> ModelConfig:
    """The encoder config narrowed to the predictor: same heads, MLP ratio, norms, grid."""
    return cfg.replace(width=width, depth=depth)


def _gather(table: jax.Array, idx: jax.Array) -> jax.Array:
    """(1, N, P) table, (B, M) indices -> (B, M, P), split like the batch (not like the
    table, whose feature axis ``mesh.fsdp`` splits)."""
    return batch_sharded(jnp.take(table[0], idx.astype(jnp.int32), axis=0))


class Predictor(nnx.Module):
    def __init__(self, cfg: ModelConfig, width: int = 384, depth: int = 6, *, rngs: nnx.Rngs):
        pcfg = predictor_config(cfg, width, depth)
        dtype = jnp.dtype(cfg.dtype)
        self.cfg = pcfg
        self.embed = nnx.Linear(cfg.width, width, dtype=dtype, rngs=rngs, kernel_metadata=fsdp(FSDP, None),
                                bias_metadata=fsdp(FSDP))
        self.mask_token = nnx.Param(nnx.initializers.truncated_normal(stddev=0.02)(rngs.params(), (1, 1, width)),
                                    **fsdp(None, None, FSDP))
        self.pos_embed = FixedEmbedding(jnp.asarray(sincos_2d_table(width, cfg.grid))[None], **fsdp(None, None, FSDP))
        self.blocks = nnx.List([Block(pcfg, rngs=rngs) for _ in range(depth)])
        self.norm = layer_norm(pcfg, rngs=rngs)
        self.proj = nnx.Linear(width, cfg.width, dtype=dtype, rngs=rngs, kernel_metadata=fsdp(None, FSDP),
                               bias_metadata=fsdp(FSDP))

    def __call__(self, context_tokens: jax.Array, context_idx: jax.Array, target_idx: jax.Array,
                 context_valid: jax.Array | None = None, target_valid: jax.Array | None = None) -> jax.Array:
        """(B, Nc, D) context features at ``context_idx`` (B, Nc) -> (B, Nt, D) predicted
        features at ``target_idx`` (B, Nt). One target block per call: batch several blocks
        by repeating the context along the batch axis.

        ``context_valid`` (B, Nc) / ``target_valid`` (B, Nt) bool, optional: padding
        entries of static-shape masks; no token attends to them, so the real outputs equal
        those of the unpadded sequence (padded outputs are meaningless)."""
        pos = self.pos_embed[...]
        context = self.embed(context_tokens)
        context = context + _gather(pos, context_idx).astype(context.dtype)
        queries = self.mask_token[...] + _gather(pos, target_idx)
        x = jnp.concatenate([context, queries.astype(context.dtype)], axis=1)
        valid = None
        if context_valid is not None or target_valid is not None:
            ones = lambda idx: jnp.ones(idx.shape, bool)  # noqa: E731
            valid = jnp.concatenate([
                ones(context_idx) if context_valid is None else context_valid,
                ones(target_idx) if target_valid is None else target_valid,
            ], axis=1)
        x = self.norm(run_blocks(self.blocks, x, valid, self.cfg.remat))[:, -target_idx.shape[1] :]
        return self.proj(x)
