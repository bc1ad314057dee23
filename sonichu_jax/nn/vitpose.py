"""ViTPose heads (classic deconv head, simple bilinear head) and float32 soft-argmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.vit import FSDP, fsdp

def conv_as_matmul(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    """Stride-1 convolution (HWIO kernel, ``pad`` zeros on every side) as one matmul over
    shifted copies of the input (im2col), for small kernels: its kernel gradient is a plain
    matmul, fast on CPU where XLA's convolution gradient is not (docs/architecture.md)."""
    kh, kw, cin, cout = kernel.shape
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    if kh == kw == 1:
        cols = x
    else:
        cols = jnp.concatenate([x[:, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.einsum("bhwk,ko->bhwo", cols, kernel.reshape(kh * kw * cin, cout))


def stride1_conv(x: jax.Array, kernel: jax.Array, pad: int, kind: str) -> jax.Array:
    """A stride-1 convolution (HWIO kernel) as shifted-copy matmuls (``kind="matmul"``,
    see `conv_as_matmul`) or as XLA's convolution (``"conv"``: no copies, which suits
    accelerators whose convolution gradients are fast): ModelConfig.head_conv."""
    if kind == "conv":
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv_as_matmul(x, kernel, pad)


class PointwiseConv(nnx.Module):
    """1x1 convolution with a bias, as a matmul (see `conv_as_matmul`); parameters are
    named and shaped like nnx.Conv's so checkpoints do not care."""

    def __init__(self, in_features: int, out_features: int, dtype, *, rngs: nnx.Rngs, conv: str = "matmul"):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (1, 1, in_features, out_features), jnp.float32),
                                **fsdp(None, None, FSDP, None))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), **fsdp(FSDP))
        self.dtype = dtype
        self.conv = conv

    def __call__(self, x: jax.Array) -> jax.Array:
        y = stride1_conv(x.astype(self.dtype), self.kernel[...].astype(self.dtype), 0, self.conv)
        return y + self.bias[...].astype(self.dtype)


class Deconv4x4(nnx.Module):
    """PyTorch's ConvTranspose2d(k=4, stride=2, padding=1, bias=False) as a sub-pixel
    convolution: the four output phases (a, b) are one 2x2 convolution with taps
    kernel[a::2, b::2], interleaved. The kernel is stored spatially flipped
    (docs/architecture.md, "The transposed convolution as a sub-pixel convolution")."""

    def __init__(self, in_features: int, out_features: int, dtype, *, rngs: nnx.Rngs, conv: str = "matmul"):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (4, 4, in_features, out_features), jnp.float32),
                                **fsdp(None, None, FSDP, None))
        self.dtype = dtype
        self.conv = conv

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        k = self.kernel[...].astype(self.dtype)
        cout = k.shape[-1]
        phases = [k[a::2, c::2] for a in (0, 1) for c in (0, 1)]  # each (2, 2, in, out)
        y = stride1_conv(x.astype(self.dtype), jnp.concatenate(phases, axis=-1), 1, self.conv)  # (B, h+1, w+1, 4*out)
        rows = []
        for a in (0, 1):
            cols = [y[:, a : a + h, c : c + w, (2 * a + c) * cout : (2 * a + c + 1) * cout] for c in (0, 1)]
            rows.append(jnp.stack(cols, axis=3))  # (B, h, w, 2, out)
        return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)


class DeconvTrunk(nnx.Module):
    """(ConvTranspose 4x4 stride 2, no bias) -> BatchNorm -> ReLU, ``num_deconv`` times."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        channels = [cfg.width] + [cfg.deconv_filters] * cfg.num_deconv
        self.deconvs = nnx.List(
            [Deconv4x4(cin, cout, dtype, rngs=rngs, conv=cfg.head_conv) for cin, cout in zip(channels[:-1], channels[1:])]
        )
        # Normalisation statistics in float32 whatever the compute dtype.
        self.norms = nnx.List(
            [
                nnx.BatchNorm(c, epsilon=cfg.batch_norm_eps, momentum=0.9, dtype=jnp.float32, rngs=rngs,
                              scale_metadata=fsdp(FSDP), bias_metadata=fsdp(FSDP))
                for c in channels[1:]
            ]
        )
        for norm in self.norms:  # BatchNorm takes no metadata for its statistics
            norm.mean.set_metadata(**fsdp(FSDP))
            norm.var.set_metadata(**fsdp(FSDP))

    def __call__(self, x: jax.Array) -> jax.Array:
        for deconv, norm in zip(self.deconvs, self.norms):
            x = jax.nn.relu(norm(deconv(x))).astype(deconv.dtype)
        return x


def final_conv(in_features: int, num_keypoints: int, kernel: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if kernel == 1:
        return PointwiseConv(in_features, num_keypoints, jnp.dtype(cfg.dtype), rngs=rngs, conv=cfg.head_conv)
    pad = kernel // 2
    return nnx.Conv(
        in_features,
        num_keypoints,
        kernel_size=(kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        dtype=jnp.dtype(cfg.dtype),
        rngs=rngs,
        kernel_metadata=fsdp(None, None, FSDP, None),
        bias_metadata=fsdp(FSDP),
    )


class ClassicHead(nnx.Module):
    """ViTPose ``TopdownHeatmapSimpleHead``: deconv trunk then a 1x1 conv to K heatmaps."""

    def __init__(self, cfg: ModelConfig, num_keypoints: int, *, rngs: nnx.Rngs):
        self.trunk = DeconvTrunk(cfg, rngs=rngs)
        self.final = final_conv(cfg.deconv_filters, num_keypoints, 1, cfg, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.final(self.trunk(features))


class SimpleHead(nnx.Module):
    """ViTPose simple decoder: ReLU, bilinear x4 (half-pixel centres, i.e. PyTorch's
    align_corners=False), 3x3 conv to K heatmaps."""

    def __init__(self, cfg: ModelConfig, num_keypoints: int, *, rngs: nnx.Rngs):
        self.final = final_conv(cfg.width, num_keypoints, 3, cfg, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        x = jax.nn.relu(features)
        b, h, w, c = x.shape
        # antialias only matters when downsampling; PyTorch's upsample has none.
        x = jax.image.resize(x, (b, 4 * h, 4 * w, c), method="bilinear", antialias=False)
        return self.final(x)


def soft_argmax(heatmaps: jax.Array, beta: float = 1.0) -> jax.Array:
    """(B, h, w, K) heatmaps -> (B, K, 2) normalised xy in [0, 1], computed in float32.

    The expectation is over pixel centres (i + 0.5) / w, the continuous frame that a plain
    resize preserves, so ``xy * (orig_w, orig_h)`` are original-image pixel coordinates.
    """
    hm = heatmaps.astype(jnp.float32)
    b, h, w, k = hm.shape
    probs = jax.nn.softmax(beta * hm.reshape(b, h * w, k), axis=1).reshape(b, h, w, k)
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    x = jnp.einsum("bwk,w->bk", probs.sum(axis=1), xs)
    y = jnp.einsum("bhk,h->bk", probs.sum(axis=2), ys)
    return jnp.stack([x, y], axis=-1)


def argmax_decode(heatmaps: jax.Array) -> jax.Array:
    """(B, h, w, K) -> (B, K, 2) normalised xy: the heatmap maximum moved a quarter pixel
    towards its higher neighbour on each axis, where both neighbours exist (mmpose 0.x
    ``keypoints_from_heatmaps``, post_process="default", which ViTPose evaluates with)."""
    hm = heatmaps.astype(jnp.float32)
    b, h, w, k = hm.shape
    flat = jnp.moveaxis(hm, 3, 1).reshape(b, k, h * w)
    idx = jnp.argmax(flat, axis=-1)
    py, px = idx // w, idx % w

    def at(dy, dx):
        return jnp.take_along_axis(flat, (jnp.clip(py + dy, 0, h - 1) * w + jnp.clip(px + dx, 0, w - 1))[..., None],
                                   axis=-1)[..., 0]

    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    sx = jnp.where(inside, jnp.sign(at(0, 1) - at(0, -1)), 0.0) * 0.25
    sy = jnp.where(inside, jnp.sign(at(1, 0) - at(-1, 0)), 0.0) * 0.25
    return jnp.stack([(px + sx + 0.5) / w, (py + sy + 0.5) / h], axis=-1)


def decode(heatmaps: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Heatmaps -> normalised xy with the model's configured decoder (``cfg.decoder``)."""
    if cfg.decoder == "argmax":
        return argmax_decode(heatmaps)
    return soft_argmax(heatmaps, cfg.softargmax_beta)
