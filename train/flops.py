"""Model FLOPs from the architecture: the matmuls and convolutions a step needs (2 per
multiply-add); a trained module costs 3x its forward pass, a frozen one 1x.
"""

from __future__ import annotations

from sonichu_jax.config import ModelConfig


def encoder_forward(cfg: ModelConfig, tokens: int) -> float:
    """ViT blocks over ``tokens`` tokens (patch embedding not included)."""
    d, t = cfg.width, tokens
    hidden = int(cfg.width * cfg.mlp_ratio)
    per_block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * hidden
    return cfg.depth * per_block + 0.0


def patch_embed_forward(cfg: ModelConfig) -> float:
    return 2.0 * cfg.num_patches * cfg.patch_size**2 * cfg.in_channels * cfg.width


def backbone_forward(cfg: ModelConfig) -> float:
    """Patch embedding + every block over the whole image."""
    return patch_embed_forward(cfg) + encoder_forward(cfg, cfg.num_patches)


def head_forward(cfg: ModelConfig, num_keypoints: int) -> float:
    """One task's head on the token grid: each 4x4 stride-2 transposed convolution is 16
    taps per input pixel; the classic head ends in a 1x1 convolution, the simple head
    (bilinear x4) in a 3x3 one."""
    gh, gw = cfg.grid
    if cfg.head_kind == "simple":
        return 2.0 * (4 * gh) * (4 * gw) * 9 * cfg.width * num_keypoints
    flops, (h, w), cin = 0.0, (gh, gw), cfg.width
    for _ in range(cfg.num_deconv):
        flops += 2.0 * h * w * 16 * cin * cfg.deconv_filters
        h, w, cin = 2 * h, 2 * w, cfg.deconv_filters
    return flops + 2.0 * h * w * cin * num_keypoints


def mean_head_forward(cfg: ModelConfig) -> float:
    """A task-homogeneous batch runs one head; over tasks, the heads' mean."""
    return sum(head_forward(cfg, t.num_keypoints) for t in cfg.tasks) / len(cfg.tasks)


def supervised_per_image(cfg: ModelConfig, freeze_backbone: bool = False) -> float:
    """Teacher / student step, per image."""
    return (1 if freeze_backbone else 3) * backbone_forward(cfg) + 3 * mean_head_forward(cfg)


def teachers_per_image(cfg: ModelConfig, num_teachers: int, tta: bool) -> float:
    """The frozen teachers' forward passes in a distillation step, per image."""
    return num_teachers * (2 if tta else 1) * (backbone_forward(cfg) + mean_head_forward(cfg))


def ijepa_per_image(cfg: ModelConfig, predictor_width: int, predictor_depth: int, context_len: int,
                    num_targets: int, target_len: int) -> float:
    """I-JEPA step, per image: the EMA target encoder on the whole image (forward only);
    the context encoder on ``context_len`` tokens and the predictor on one sequence of
    context + ``target_len`` tokens per target block (both trained)."""
    target = backbone_forward(cfg)
    context = patch_embed_forward(cfg) + encoder_forward(cfg, context_len)
    pcfg = cfg.replace(width=predictor_width, depth=predictor_depth)
    seq = context_len + target_len
    predictor = num_targets * (
        encoder_forward(pcfg, seq)
        + 2.0 * context_len * cfg.width * predictor_width  # embed
        + 2.0 * target_len * predictor_width * cfg.width  # proj
    )
    return target + 3 * (context + predictor)
