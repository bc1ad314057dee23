"""Every variable of a Sonichu model (and of an I-JEPA predictor) by Flax state path, with
its shape, from the config alone: the converter plans without starting a JAX backend (a
test checks these against the Flax modules for every config kind)."""

from __future__ import annotations

from sonichu_jax.config import ModelConfig

Shapes = dict[str, tuple[int, ...]]


def _norm(path: str, width: int) -> Shapes:
    return {f"{path}/bias": (width,), f"{path}/scale": (width,)}


def _dense(path: str, fan_in: int, fan_out: int, bias: bool = True) -> Shapes:
    out = {f"{path}/kernel": (fan_in, fan_out)}
    if bias:
        out[f"{path}/bias"] = (fan_out,)
    return out


def block_shapes(path: str, cfg: ModelConfig) -> Shapes:
    d, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    return {
        **_dense(f"{path}/attn/proj", d, d),
        **_dense(f"{path}/attn/qkv", d, 3 * d, cfg.qkv_bias),
        **_dense(f"{path}/mlp/fc1", d, hidden),
        **_dense(f"{path}/mlp/fc2", hidden, d),
        **_norm(f"{path}/norm1", d),
        **_norm(f"{path}/norm2", d),
    }


def encoder_shapes(cfg: ModelConfig, path: str = "backbone") -> Shapes:
    """`nn.vit.VisionTransformer` under ``path``."""
    d, p = cfg.width, cfg.patch_size
    slots = cfg.num_patches + (cfg.pos_embed == "learned_cls_folded")
    out: Shapes = {}
    for i in range(cfg.depth):
        out.update(block_shapes(f"{path}/blocks/{i}", cfg))
    out.update(_norm(f"{path}/norm", d))
    out[f"{path}/patch_embed/proj/bias"] = (d,)
    out[f"{path}/patch_embed/proj/kernel"] = (p, p, cfg.in_channels, d)
    out[f"{path}/pos_embed"] = (1, slots, d)
    return out


def trunk_shapes(path: str, cfg: ModelConfig) -> Shapes:
    """`nn.vitpose.DeconvTrunk`: 4x4 deconvolutions without bias, each with a BatchNorm."""
    out: Shapes = {}
    cin = cfg.width
    for j in range(cfg.num_deconv):
        out[f"{path}/deconvs/{j}/kernel"] = (4, 4, cin, cfg.deconv_filters)
        cin = cfg.deconv_filters
    for j in range(cfg.num_deconv):
        for name in ("bias", "mean", "scale", "var"):
            out[f"{path}/norms/{j}/{name}"] = (cfg.deconv_filters,)
    return out


def head_shapes(cfg: ModelConfig, task: str, num_keypoints: int) -> Shapes:
    """One task's head: ``heads/{task}/...`` (the shared trunk is not part of it)."""
    path = f"heads/{task}"
    if cfg.head_kind == "simple":
        return {f"{path}/final/bias": (num_keypoints,), f"{path}/final/kernel": (3, 3, cfg.width, num_keypoints)}
    out = {f"{path}/final/bias": (num_keypoints,), f"{path}/final/kernel": (1, 1, cfg.deconv_filters, num_keypoints)}
    if cfg.head_sharing == "per_task":
        out.update(trunk_shapes(f"{path}/trunk", cfg))
    return out


def model_shapes(cfg: ModelConfig) -> Shapes:
    """`nn.sonichu.SonichuModel`: encoder, the shared trunk (if any), one head per task."""
    out = encoder_shapes(cfg)
    for spec in cfg.tasks:
        out.update(head_shapes(cfg, spec.name, spec.num_keypoints))
    if cfg.head_sharing == "shared_trunk":
        out.update(trunk_shapes("trunk", cfg))
    return out


def predictor_shapes(cfg: ModelConfig, width: int, depth: int) -> Shapes:
    """`nn.predictor.Predictor` of an encoder of ``cfg``, under ``predictor/``."""
    narrow = cfg.replace(width=width, depth=depth)
    out: Shapes = {}
    for i in range(depth):
        out.update(block_shapes(f"predictor/blocks/{i}", narrow))
    out.update(_dense("predictor/embed", cfg.width, width))
    out["predictor/mask_token"] = (1, 1, width)
    out.update(_norm("predictor/norm", width))
    out["predictor/pos_embed"] = (1, cfg.num_patches, width)
    out.update(_dense("predictor/proj", width, cfg.width))
    return out


def is_head_path(path: str) -> bool:
    """Whether a Flax path belongs to the keypoint heads (a task head or the shared trunk)."""
    return path.startswith(("heads/", "trunk/"))

