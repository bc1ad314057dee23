"""Independent PyTorch reference of the Sonichu architecture, for parity tests and benchmarks.

Never imported by the library: tests and benchmarks import it, and `sonichu-jax parity`
loads it by file path (like a user's own ``modeling_sonichu.py``). Needs torch and
safetensors. State-dict names follow the I-JEPA encoder (``backbone.*``) and mmpose heads
(``heads.{task}.deconv_layers.{0,1,3,4}``, ``heads.{task}.final_layer``); a shared trunk
is ``head_trunk.deconv_layers.*``. Images are NCHW here, as PyTorch users pass them.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn


def sincos_table(width: int, gh: int, gw: int) -> torch.Tensor:
    """MAE 2D sin-cos table, (gh * gw, width): first half column coordinate, then row."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class PatchEmbed(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        p = cfg["patch_size"]
        self.proj = nn.Conv2d(cfg["in_channels"], cfg["width"], p, stride=p, padding=cfg["patch_padding"])

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["width"]
        self.num_heads = cfg["num_heads"]
        self.qkv = nn.Linear(d, 3 * d, bias=cfg["qkv_bias"])
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg["width"] * cfg["mlp_ratio"])
        self.fc1 = nn.Linear(cfg["width"], hidden)
        self.fc2 = nn.Linear(hidden, cfg["width"])

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["layer_norm_eps"]
        self.norm1 = nn.LayerNorm(cfg["width"], eps=eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg["width"], eps=eps)
        self.mlp = Mlp(cfg)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, w = cfg["image_size"]
        self.grid = (h // cfg["patch_size"], w // cfg["patch_size"])
        self.kind = cfg["pos_embed"]
        n = self.grid[0] * self.grid[1]
        self.patch_embed = PatchEmbed(cfg)
        if self.kind == "sincos":
            table = sincos_table(cfg["width"], *self.grid)[None]
            self.pos_embed = nn.Parameter(table, requires_grad=False)
        else:
            slots = n + 1 if self.kind == "learned_cls_folded" else n
            self.pos_embed = nn.Parameter(torch.randn(1, slots, cfg["width"]) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["depth"])])
        self.norm = nn.LayerNorm(cfg["width"], eps=cfg["layer_norm_eps"])

    def forward(self, x):
        tokens = self.patch_embed(x)
        pos = self.pos_embed
        if self.kind == "learned_cls_folded":
            pos = pos[:, 1:] + pos[:, :1]
        tokens = tokens + pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def deconv_layers(cfg) -> nn.Sequential:
    layers, cin = [], cfg["width"]
    for _ in range(cfg["num_deconv"]):
        cout = cfg["deconv_filters"]
        layers += [
            nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, output_padding=0, bias=False),
            nn.BatchNorm2d(cout, eps=cfg["batch_norm_eps"]),
            nn.ReLU(inplace=True),
        ]
        cin = cout
    return nn.Sequential(*layers)


class Head(nn.Module):
    def __init__(self, cfg, num_keypoints, with_trunk):
        super().__init__()
        self.simple = cfg["head_kind"] == "simple"
        if self.simple:
            self.final_layer = nn.Conv2d(cfg["width"], num_keypoints, 3, padding=1)
        else:
            if with_trunk:
                self.deconv_layers = deconv_layers(cfg)
            self.final_layer = nn.Conv2d(cfg["deconv_filters"], num_keypoints, 1)

    def forward(self, x):
        if self.simple:
            x = F.interpolate(F.relu(x), scale_factor=4, mode="bilinear", align_corners=False)
        elif hasattr(self, "deconv_layers"):
            x = self.deconv_layers(x)
        return self.final_layer(x)


def soft_argmax(heatmaps: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, 2) normalised xy, expectation over pixel centres."""
    b, k, h, w = heatmaps.shape
    probs = (beta * heatmaps.float()).reshape(b, k, h * w).softmax(dim=-1).reshape(b, k, h, w)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    return torch.stack([(probs.sum(2) * xs).sum(-1), (probs.sum(3) * ys).sum(-1)], dim=-1)


DEFAULTS = dict(
    image_size=[256, 256], patch_size=16, in_channels=3, width=768, depth=12, num_heads=12, mlp_ratio=4.0,
    qkv_bias=True, layer_norm_eps=1e-6, pos_embed="sincos", patch_padding=0, head_kind="classic",
    head_sharing="per_task", deconv_filters=256, num_deconv=2, batch_norm_eps=1e-5, softargmax_beta=1.0,
)


class SonichuModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
        self.cfg = cfg
        self.tasks = dict(config["tasks"])
        self.flip_perms = dict(config.get("flip_permutations") or {})
        self.backbone = Backbone(cfg)
        shared = cfg["head_sharing"] == "shared_trunk"
        if shared:
            self.head_trunk = nn.Module()
            self.head_trunk.deconv_layers = deconv_layers(cfg)
        self.heads = nn.ModuleDict({t: Head(cfg, k, with_trunk=not shared) for t, k in self.tasks.items()})

    def heatmaps(self, pixel_values: torch.Tensor, task: str) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, h, w)."""
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; valid: {list(self.heads)}")
        tokens = self.backbone(pixel_values)
        gh, gw = self.backbone.grid
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
        if hasattr(self, "head_trunk"):
            x = self.head_trunk.deconv_layers(x)
        return self.heads[task](x)

    def predict(self, pixel_values: torch.Tensor, task: str, tta: bool = True) -> torch.Tensor:
        beta = self.cfg["softargmax_beta"]
        coords = soft_argmax(self.heatmaps(pixel_values, task), beta)
        if not tta:
            return coords
        flipped = soft_argmax(self.heatmaps(pixel_values.flip(-1), task), beta)
        flipped = torch.stack([1.0 - flipped[..., 0], flipped[..., 1]], dim=-1)
        if task in self.flip_perms:
            flipped = flipped[:, list(self.flip_perms[task])]
        return 0.5 * (coords + flipped)

    @classmethod
    def from_pretrained(cls, directory: str) -> "SonichuModel":
        from safetensors.torch import load_file

        with open(os.path.join(directory, "config.json")) as fh:
            model = cls(json.load(fh))
        model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")), strict=True)
        return model.eval()

    def save_pretrained(self, directory: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(directory, "model.safetensors"))
        config = dict(self.cfg, model_type="sonichu", tasks=self.tasks)
        if self.flip_perms:
            config["flip_permutations"] = self.flip_perms
        with open(os.path.join(directory, "config.json"), "w") as fh:
            json.dump(config, fh, indent=2)


def randomize_(model: SonichuModel, seed: int = 0, bn_scale: float = 1.0) -> SonichuModel:
    """Give every tensor non-trivial values, so parity tests can see layout errors:
    non-unit BatchNorm statistics and affine terms, non-zero biases, and a larger final
    layer so heatmaps are peaked (soft-argmax of a flat map hides errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name == "backbone.pos_embed" and not tensor.requires_grad:
                continue
            if name.endswith("bias"):
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=gen))
            elif tensor.ndim == 1:  # norm scales
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=gen))
            else:
                fan_in = tensor[0].numel() if tensor.ndim > 1 else tensor.numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / math.sqrt(fan_in))
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.3 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(bn_scale * (0.5 + torch.rand(module.running_var.shape, generator=gen)))
                module.num_batches_tracked.fill_(1234)
            if name.endswith("final_layer"):
                module.weight.mul_(16.0)
    return model
