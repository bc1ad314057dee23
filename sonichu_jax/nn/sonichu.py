"""SonichuModel: ViT encoder + one ViTPose head per task (or a shared deconv trunk)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.errors import InputError
from sonichu_jax.model_arrays import filled, read_pretrained, save_flax
from sonichu_jax.nn.vit import VisionTransformer
from sonichu_jax.nn.vitpose import ClassicHead, DeconvTrunk, SimpleHead, decode, final_conv


EMBED_POOLS = ("mean", "none")


def unflip(coords: jax.Array, flip_perm: tuple[int, ...] | None) -> jax.Array:
    """(B, K, 2) coordinates predicted on mirrored images -> the original images' frame: x
    back as 1 - x, keypoints relabelled (keypoint i is ``flip_perm[i]`` of the mirrored one)."""
    coords = coords.at[..., 0].set(1.0 - coords[..., 0])
    return coords if flip_perm is None else coords[:, jnp.asarray(flip_perm)]


class TaskOutput(nnx.Module):
    """The per-task part of a shared-trunk model: only the final 1x1 conv."""

    def __init__(self, cfg: ModelConfig, num_keypoints: int, *, rngs: nnx.Rngs):
        self.final = final_conv(cfg.deconv_filters, num_keypoints, 1, cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.final(x)


class SonichuModel(nnx.Module):
    """Multi-task keypoint model: ``heatmaps`` (B, H/4, W/4, K), ``predict`` (B, K, 2)
    normalised xy and ``embed`` (B, D) or (B, gh, gw, D) take channels-last (B, H, W, 3)
    ImageNet-normalised images and run jit-compiled in eval mode, one compilation per
    (task or pooling, batch shape, tta)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.backbone = VisionTransformer(cfg, rngs=rngs)
        self.trunk = DeconvTrunk(cfg, rngs=rngs) if cfg.head_sharing == "shared_trunk" else None
        head = SimpleHead if cfg.head_kind == "simple" else ClassicHead if self.trunk is None else TaskOutput
        self.heads = nnx.Dict({spec.name: head(cfg, spec.num_keypoints, rngs=rngs) for spec in cfg.tasks})

    # -- forward pieces (traceable; used by the jitted entry points and the trainers) ----
    def feature_map(self, pixel_values: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, gh, gw, D) encoder features on the token grid."""
        tokens = self.backbone(pixel_values)
        gh, gw = self.cfg.grid
        return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])

    def head_heatmaps(self, features: jax.Array, task: str) -> jax.Array:
        """Token-grid features -> (B, h, w, K) float32 heatmaps of one task's head."""
        head = self.heads[self.cfg.task(task).name]
        x = self.trunk(features) if self.trunk is not None else features
        return head(x).astype(jnp.float32)

    def forward_heatmaps(self, pixel_values: jax.Array, task: str) -> jax.Array:
        return self.head_heatmaps(self.feature_map(pixel_values), task)

    def forward_views(self, pixel_values: jax.Array, task: str, tta: bool) -> jax.Array:
        """(V, B, K, 2) decoded xy: V = 1, or 2 with flip TTA, whose mirrored images go
        through the backbone in the same batch as the plain ones (one pass)."""
        if tta:
            pixel_values = jnp.concatenate([pixel_values, pixel_values[:, :, ::-1]])
        return self.decode_views(self.feature_map(pixel_values), task, tta)

    def decode_views(self, features: jax.Array, task: str, tta: bool) -> jax.Array:
        """`forward_views` from the backbone features: the mirrored half is mapped back
        to the original frame. The TTA prediction is the views' mean; their disagreement
        is the pseudo-label confidence."""
        coords = decode(self.head_heatmaps(features, task), self.cfg)
        if not tta:
            return coords[None]
        plain, mirrored = jnp.split(coords, 2)
        return jnp.stack([plain, unflip(mirrored, self.cfg.task(task).flip_perm)])

    def forward_predict(self, pixel_values: jax.Array, task: str, tta: bool) -> jax.Array:
        return self.forward_views(pixel_values, task, tta).mean(0)

    # -- jitted public API --------------------------------------------------------------
    def _pixels(self, pixel_values) -> jax.Array:
        """The input as a (B, H, W, C) array, or a one-line error that says how to fix it."""
        x = jnp.asarray(pixel_values)
        c = self.cfg.in_channels
        if x.ndim == 4 and x.shape[-1] != c and x.shape[1] == c:
            raise InputError(f"pixel_values of shape {tuple(x.shape)} is channels-first (B, {c}, H, W); this model "
                             f"takes channels-last (B, H, W, {c}): pass x.transpose(0, 2, 3, 1) (numpy, JAX) or "
                             "x.permute(0, 2, 3, 1) (torch)")
        if x.ndim != 4 or x.shape[-1] != c:
            raise InputError(f"pixel_values must be (batch, height, width, {c}), got shape {tuple(x.shape)}")
        return x

    def heatmaps(self, pixel_values, task: str) -> jax.Array:
        self.cfg.task(task)  # unknown task: a clear error before tracing
        graphdef, state = nnx.split(self)
        return _jit_heatmaps(graphdef, state, self._pixels(pixel_values), task)

    def predict(self, pixel_values, task: str, tta: bool = True) -> jax.Array:
        self.cfg.task(task)
        graphdef, state = nnx.split(self)
        return _jit_predict(graphdef, state, self._pixels(pixel_values), task, bool(tta))

    def embed(self, pixel_values, pool: str = "mean") -> jax.Array:
        """Backbone features (the final-normed encoder output, as the heads see it), float32:
        ``pool="mean"`` averages the token grid -> (B, D); ``pool="none"`` keeps it ->
        (B, gh, gw, D)."""
        if pool not in EMBED_POOLS:
            raise InputError(f"pool must be one of {', '.join(EMBED_POOLS)}, got {pool!r}")
        graphdef, state = nnx.split(self)
        return _jit_embed(graphdef, state, self._pixels(pixel_values), pool)

    # -- checkpoints ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, layout: str | None = None, dtype: str | None = None,
                        report=None, strict: bool = False, tasks=None, rename=None, entry=None) -> "SonichuModel":
        """Load a checkpoint directory, weights file or Hub name (``owner/name``), in eval
        mode, through `model_arrays.read_pretrained` (unused tensors, new heads for
        ``tasks``, ``rename`` rules: docs/checkpoints.md)."""
        cfg, arrays = read_pretrained(path, layout=layout, dtype=dtype, report=report, strict=strict, tasks=tasks,
                                      rename=rename, entry=entry)
        return cls.from_arrays(cfg, arrays)

    @classmethod
    def from_arrays(cls, cfg: ModelConfig, arrays: dict) -> "SonichuModel":
        """A model in eval mode whose every variable comes from ``arrays`` (keys = Flax paths)."""
        model = filled(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))), arrays)
        model.eval()
        return model

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json + flax_model.safetensors (Flax layout)."""
        save_flax(self, directory)


def _inference_copy(graphdef, state) -> SonichuModel:
    """The traced copy the jitted entry points run, in eval mode (BatchNorm's running
    statistics) whatever mode the caller's model is in; the caller's model is untouched."""
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_heatmaps(graphdef, state, pixel_values, task):
    return _inference_copy(graphdef, state).forward_heatmaps(pixel_values, task)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _jit_predict(graphdef, state, pixel_values, task, tta):
    return _inference_copy(graphdef, state).forward_predict(pixel_values, task, tta)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_embed(graphdef, state, pixel_values, pool):
    features = _inference_copy(graphdef, state).feature_map(pixel_values).astype(jnp.float32)
    return features.mean(axis=(1, 2)) if pool == "mean" else features

