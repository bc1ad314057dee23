"""ViTPose heads (classic deconv head, simple bilinear head) and float32 soft-argmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig

# PyTorch ConvTranspose2d(k=4, s=2, p=1) pads the dilated input by k - 1 - p on each side.
_DECONV_KERNEL = 4
_DECONV_PAD = _DECONV_KERNEL - 1 - 1


class DeconvTrunk(nnx.Module):
    """(ConvTranspose 4x4 stride 2, no bias) -> BatchNorm -> ReLU, ``num_deconv`` times.

    The kernel is stored as (kH, kW, in, out) of the *spatially flipped* PyTorch kernel,
    which makes lax.conv_transpose equal PyTorch's transposed convolution.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        channels = [cfg.width] + [cfg.deconv_filters] * cfg.num_deconv
        self.deconvs = nnx.List(
            [
                nnx.ConvTranspose(
                    cin,
                    cout,
                    kernel_size=(_DECONV_KERNEL, _DECONV_KERNEL),
                    strides=(2, 2),
                    padding=((_DECONV_PAD, _DECONV_PAD), (_DECONV_PAD, _DECONV_PAD)),
                    use_bias=False,
                    dtype=dtype,
                    rngs=rngs,
                )
                for cin, cout in zip(channels[:-1], channels[1:])
            ]
        )
        # Normalisation statistics in float32 whatever the compute dtype.
        self.norms = nnx.List(
            [
                nnx.BatchNorm(c, epsilon=cfg.batch_norm_eps, momentum=0.9, dtype=jnp.float32, rngs=rngs)
                for c in channels[1:]
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for deconv, norm in zip(self.deconvs, self.norms):
            x = jax.nn.relu(norm(deconv(x))).astype(deconv.dtype)
        return x


def final_conv(in_features: int, num_keypoints: int, kernel: int, cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Conv:
    pad = kernel // 2
    return nnx.Conv(
        in_features,
        num_keypoints,
        kernel_size=(kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        dtype=jnp.dtype(cfg.dtype),
        rngs=rngs,
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
