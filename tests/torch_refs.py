"""Small PyTorch modules whose state-dict names follow the official checkpoints the
converter reads: mmpose ViTPose, timm ViT and the I-JEPA encoder + predictor. They reuse
the blocks of this project's PyTorch reference (whose names are the timm / I-JEPA ones)
and differ from it exactly where the official modules do."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonichu_jax.reference import ijepa as ijepa_ref
from sonichu_jax.reference.modeling_sonichu import DEFAULTS, Backbone, Block, Head, PatchEmbed


def torch_cfg(**changes) -> dict:
    return {**DEFAULTS, **changes}


def randomize(module: nn.Module, seed: int = 0, final_scale: float = 16.0) -> nn.Module:
    """Non-trivial values everywhere (biases, norm affines, BatchNorm statistics) and a
    scaled final layer, so heatmaps are peaked and layout errors show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            if not tensor.requires_grad:
                continue  # fixed sin-cos tables stay what they are
            if name.endswith("bias"):
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=gen))
            elif tensor.ndim == 1:
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=gen))
            elif "pos_embed" in name or "position" in name or "mask_token" in name or "cls_token" in name:
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=gen))
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / math.sqrt(fan_in))
        for name, sub in module.named_modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.running_mean.copy_(0.3 * torch.randn(sub.running_mean.shape, generator=gen))
                sub.running_var.copy_(0.5 + torch.rand(sub.running_var.shape, generator=gen))
                sub.num_batches_tracked.fill_(77)
            if name.endswith(("final_layer", "head.conv")):
                sub.weight.mul_(final_scale)
    return module.eval()


class ViTPoseBackbone(nn.Module):
    """mmpose ViT: padding-2 patches, (1, N + 1, D) table folded into the patches, an
    unused ``cls_token``, final norm ``last_norm``."""

    def __init__(self, cfg: dict):
        super().__init__()
        h, w = cfg["image_size"]
        p, d = cfg["patch_size"], cfg["width"]
        self.grid = (h // p, w // p)
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["depth"])])
        self.last_norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def forward(self, x):
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            tokens = block(tokens)
        return self.last_norm(tokens)


class ViTPoseModel(nn.Module):
    """``backbone.*`` + ``keypoint_head.{deconv_layers,final_layer}``; heatmaps NCHW."""

    def __init__(self, cfg: dict, num_keypoints: int):
        super().__init__()
        self.backbone = ViTPoseBackbone(cfg)
        self.keypoint_head = Head(cfg, num_keypoints, with_trunk=True)

    def forward(self, x):
        tokens = self.backbone(x)
        gh, gw = self.backbone.grid
        return self.keypoint_head(tokens.transpose(1, 2).reshape(len(x), -1, gh, gw))


def timm_vit(cfg: dict) -> nn.Module:
    """timm ``VisionTransformer(class_token=False)`` names at the top level: patch_embed,
    pos_embed (learned), blocks.{i}, norm. Its forward returns the patch features."""
    return Backbone({**cfg, "pos_embed": "learned"})


class IJepaPredictor(ijepa_ref.Predictor):
    """The official-shaped predictor (`sonichu_jax.reference.ijepa`) called with one
    context and one target block, as this project's predictor is."""

    def __init__(self, cfg: dict, width: int, depth: int):
        h, w = cfg["image_size"]
        grid = (h // cfg["patch_size"], w // cfg["patch_size"])
        super().__init__(grid, cfg["width"], width, depth, cfg["num_heads"], cfg["mlp_ratio"], cfg["qkv_bias"],
                         cfg["layer_norm_eps"])

    def forward(self, x, context_idx, target_idx):
        return super().forward(x, [context_idx], [target_idx])


# official I-JEPA predictor names -> this project's (the encoder's names are the same)
IJEPA_RENAMES = {"predictor_embed": "embed", "predictor_blocks": "blocks", "predictor_norm": "norm",
                 "predictor_proj": "proj", "predictor_pos_embed": "pos_embed"}


def ijepa_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """An official-named I-JEPA network's tensors under this project's state paths
    (``blocks/0/attn/qkv/kernel``): Linear weights transposed, Conv2d OIHW -> HWIO,
    LayerNorm weight -> scale. A plain name map, independent of the converter's rules."""
    out = {}
    for name, tensor in module.state_dict().items():
        value = tensor.numpy()
        keys = [IJEPA_RENAMES.get(k, k) for k in name.split(".")]
        if keys[-1] == "weight" and value.ndim == 4:
            keys[-1], value = "kernel", value.transpose(2, 3, 1, 0)
        elif keys[-1] == "weight" and value.ndim == 2:
            keys[-1], value = "kernel", value.T
        elif keys[-1] == "weight":
            keys[-1] = "scale"
        out["/".join(keys)] = value
    return out


def predictor_from_arrays(cfg, width: int, depth: int, arrays: dict[str, np.ndarray]):
    """A predictor whose every variable comes from ``arrays`` (keys ``predictor/...``)."""
    from flax import nnx

    from sonichu_jax.model_arrays import filled
    from sonichu_jax.nn.predictor import Predictor

    return filled(nnx.eval_shape(lambda: Predictor(cfg, width, depth, rngs=nnx.Rngs(0))), arrays, prefix="predictor/")


def predictor_parity(cfg, width: int, depth: int, arrays: dict[str, np.ndarray], predictor: nn.Module,
                     seed: int = 0) -> float:
    """Relative L2 between this project's predictor, every variable from ``arrays`` (paths
    within `Predictor`), and the official-shaped PyTorch ``predictor`` on the same indices:
    the official call takes one context and two target blocks at once, ours one block per
    call. Two images, each with its own context; random encoder features."""
    import jax
    from flax import nnx


    n = cfg.num_patches
    rng = np.random.default_rng(seed)
    ctx = np.stack([np.sort(rng.permutation(n)[: n // 2]) for _ in range(2)])
    blocks = [np.stack([rng.permutation(n)[:4] for _ in range(2)]) for _ in range(2)]
    tokens = rng.normal(size=(2, ctx.shape[1], cfg.width)).astype(np.float32)
    with torch.no_grad():
        theirs = predictor(torch.from_numpy(tokens), [torch.from_numpy(ctx)], [torch.from_numpy(b) for b in blocks])
    ours = predictor_from_arrays(cfg, width, depth, {f"predictor/{k}": v for k, v in arrays.items()})
    graphdef, state = nnx.split(ours)
    run = jax.jit(lambda s, t, c, b: nnx.merge(graphdef, s)(t, c, b))
    mine = np.concatenate([np.asarray(run(state, tokens, ctx, b)) for b in blocks])
    return float(np.linalg.norm(mine - theirs.numpy()) / np.linalg.norm(theirs.numpy()))


def ijepa_state(encoder: nn.Module, target_encoder: nn.Module, predictor: nn.Module) -> dict:
    """The official training checkpoint's tensors, DDP ``module.`` prefixes included,
    flattened the way safetensors stores nested dicts."""
    out = {}
    for part, module in (("encoder", encoder), ("target_encoder", target_encoder), ("predictor", predictor)):
        for name, tensor in module.state_dict().items():
            out[f"{part}.module.{name}"] = tensor.contiguous()
    return out


def peak_softmax(heatmaps_nchw: torch.Tensor) -> float:
    """Largest per-map softmax probability: > 0.1 means the maps are peaked."""
    flat = heatmaps_nchw.flatten(2)
    return float(F.softmax(flat, dim=-1).max())
