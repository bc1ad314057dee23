"""Independent PyTorch reference of the I-JEPA networks as the official training code
shapes them (facebookresearch/ijepa, ``src/models/vision_transformer.py``; Assran et al.,
"Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture",
CVPR 2023): parameter names, the list-of-masks calling convention and the checkpoint dict.
Written for the parity tests from the paper and the public module's names; never imported
by the library."""

from __future__ import annotations

import torch
from torch import nn

from sonichu_jax.reference.modeling_sonichu import DEFAULTS, Backbone, Block, sincos_table


def gather_tokens(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """(B, N, D) and a list of (B, K) index tensors -> (len(masks) * B, K, D), mask-major."""
    return torch.cat([torch.gather(x, 1, m[..., None].expand(-1, -1, x.shape[-1])) for m in masks], dim=0)


def repeat_groups(x: torch.Tensor, group: int, times: int) -> torch.Tensor:
    """Repeat each consecutive run of ``group`` rows ``times`` times: [a, b] -> [a, a, b, b]
    for groups a, b (the predictor's target rows follow its repeated contexts)."""
    return torch.cat([x[i : i + group].repeat(times, *([1] * (x.ndim - 1))) for i in range(0, len(x), group)], dim=0)


class Encoder(Backbone):
    """The official ``VisionTransformer`` (fixed sin-cos table, no class token)."""

    def __init__(self, cfg: dict):
        super().__init__({**DEFAULTS, **cfg, "pos_embed": "sincos"})

    def forward(self, x, masks: list[torch.Tensor] | None = None):
        tokens = self.patch_embed(x) + self.pos_embed
        if masks is not None:
            tokens = gather_tokens(tokens, masks)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class Predictor(nn.Module):
    """The official ``VisionTransformerPredictor`` (names and computation)."""

    def __init__(self, grid: tuple[int, int], embed_dim: int, predictor_embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, layer_norm_eps: float = 1e-6):
        super().__init__()
        width = predictor_embed_dim
        block_cfg = dict(width=width, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         layer_norm_eps=layer_norm_eps)
        self.predictor_embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.predictor_pos_embed = nn.Parameter(sincos_table(width, *grid)[None], requires_grad=False)
        self.predictor_blocks = nn.ModuleList([Block(block_cfg) for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.predictor_proj = nn.Linear(width, embed_dim)

    def forward(self, x, masks_x: list[torch.Tensor], masks: list[torch.Tensor]):
        """``x``: (len(masks_x) * B, Nc, D) context features; ``masks_x`` / ``masks``: lists
        of (B, Nc) / (B, Nt) indices. Returns (len(masks) * len(masks_x) * B, Nt, D)."""
        batch = len(x) // len(masks_x)
        positions = self.predictor_pos_embed.expand(batch, -1, -1)
        x = self.predictor_embed(x) + gather_tokens(positions, masks_x)
        context_len = x.shape[1]
        queries = repeat_groups(gather_tokens(positions, masks), batch, len(masks_x)) + self.mask_token
        x = torch.cat([x.repeat(len(masks), 1, 1), queries], dim=1)
        for block in self.predictor_blocks:
            x = block(x)
        return self.predictor_proj(self.predictor_norm(x)[:, context_len:])


def training_checkpoint(encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module, epoch: int = 1) -> dict:
    """The dict the official trainer saves (``jepa-latest.pth.tar``): each network's state
    under DistributedDataParallel's ``module.`` prefix, beside the optimiser and run state."""

    def ddp(module: nn.Module) -> dict:
        return {f"module.{k}": v.clone() for k, v in module.state_dict().items()}

    params = [p for p in (*encoder.parameters(), *predictor.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    return {
        "encoder": ddp(encoder),
        "predictor": ddp(predictor),
        "target_encoder": ddp(target_encoder),
        "opt": optimizer.state_dict(),
        "scaler": None,
        "epoch": epoch,
        "loss": 0.5,
        "batch_size": 2048,
        "world_size": 16,
        "lr": 1e-3,
    }
