"""Model configuration: the architecture, the task table, and their `config.json` form.

Pure Python (no JAX) so that the converter, the data pipeline and the CLI can read a
checkpoint's configuration without initialising an accelerator backend.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from sonichu_jax.errors import ConfigError, UnknownTaskError

POS_EMBED_KINDS = ("sincos", "learned", "learned_cls_folded")
HEAD_KINDS = ("classic", "simple")
HEAD_SHARING = ("per_task", "shared_trunk")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# Compute options: how a model computes, not what. The same weights give the same
# function under any of them; they are not part of the architecture.
REMAT_KINDS = ("none", "block", "block_save_dots")
ATTENTION_KINDS = ("auto", "xla", "cudnn", "heads_major")
HEAD_CONV_KINDS = ("matmul", "conv")
COMPUTE_FIELDS = ("dtype", "remat", "attention", "head_conv")

CONFIG_NAME = "config.json"
MODEL_TYPE = "sonichu"


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task: its keypoint count and, optionally, how a horizontal flip
    permutes its keypoints (``flip_perm[i]`` is the index that keypoint ``i`` becomes)."""

    name: str
    num_keypoints: int
    flip_perm: tuple[int, ...] | None = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"task name must be a non-empty string, got {self.name!r}")
        if self.num_keypoints < 1:
            raise ConfigError(f"task {self.name!r}: num_keypoints must be >= 1")
        if self.flip_perm is not None:
            perm = tuple(int(i) for i in self.flip_perm)
            if sorted(perm) != list(range(self.num_keypoints)):
                raise ConfigError(
                    f"task {self.name!r}: flip_perm {perm} is not a permutation of "
                    f"0..{self.num_keypoints - 1}"
                )
            object.__setattr__(self, "flip_perm", perm)


# The card's nine tasks and their keypoint counts (REFERENCE.md section 1).
CARD_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("AOP", 4),
    TaskSpec("FUGC", 2),
    TaskSpec("FA", 4),
    TaskSpec("HC", 4),
    TaskSpec("IVC", 2),
    TaskSpec("PLAX", 22),
    TaskSpec("PSAX", 4),
    TaskSpec("A4C", 16),
    TaskSpec("fetal_femur", 2),
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Sonichu model: a plain ViT encoder plus ViTPose heads.

    Defaults are the card's model (ViT-B/16 at 256x256, one classic head per task).
    """

    image_size: tuple[int, int] = (256, 256)  # (height, width)
    patch_size: int = 16
    in_channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    pos_embed: str = "sincos"
    patch_padding: int = 0
    head_kind: str = "classic"
    head_sharing: str = "per_task"
    deconv_filters: int = 256
    num_deconv: int = 2
    batch_norm_eps: float = 1e-5
    softargmax_beta: float = 1.0
    dtype: str = "float32"  # compute dtype; parameters are always float32
    # Compute options (COMPUTE_FIELDS). remat: recompute each transformer block in the
    # backward pass ("block"), or all but its matmuls ("block_save_dots"), to fit larger
    # batches per chip. attention: jax.nn.dot_product_attention's implementation (auto
    # picks cuDNN on GPUs where it can), or heads_major (einsums laid out per head). head_conv: the heads' 2x2 and 1x1 convolutions as
    # shifted-copy matmuls (fast backward on CPU) or as XLA convolutions.
    remat: str = "none"
    attention: str = "auto"
    head_conv: str = "matmul"
    tasks: tuple[TaskSpec, ...] = CARD_TASKS

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if len(self.image_size) != 2:
            raise ConfigError(f"image_size must be (height, width), got {self.image_size}")
        for side in self.image_size:
            if side <= 0 or side % self.patch_size:
                raise ConfigError(
                    f"image_size {self.image_size} must be positive multiples of "
                    f"patch_size {self.patch_size}"
                )
        if self.width % self.num_heads:
            raise ConfigError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        for name, value, allowed in (
            ("pos_embed", self.pos_embed, POS_EMBED_KINDS),
            ("head_kind", self.head_kind, HEAD_KINDS),
            ("head_sharing", self.head_sharing, HEAD_SHARING),
            ("dtype", self.dtype, COMPUTE_DTYPES),
            ("remat", self.remat, REMAT_KINDS),
            ("attention", self.attention, ATTENTION_KINDS),
            ("head_conv", self.head_conv, HEAD_CONV_KINDS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if self.head_kind == "simple" and self.head_sharing != "per_task":
            raise ConfigError("the simple head has no deconv trunk to share; use head_sharing='per_task'")
        if self.pos_embed == "sincos" and self.width % 4:
            raise ConfigError(f"a 2D sin-cos table needs width divisible by 4, got {self.width}")
        names = [t.name for t in self.tasks]
        if not names:
            raise ConfigError("a model needs at least one task")
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate task names in {names}")

    # -- derived quantities -------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(height, width) of the heatmaps: each deconv doubles the token grid, the simple
        head upsamples by 4."""
        gh, gw = self.grid
        factor = 4 if self.head_kind == "simple" else 2**self.num_deconv
        return gh * factor, gw * factor

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise UnknownTaskError(name, self.task_names)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": MODEL_TYPE}
        for f in dataclasses.fields(self):
            if f.name == "tasks":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["tasks"] = {t.name: t.num_keypoints for t in self.tasks}
        perms = {t.name: list(t.flip_perm) for t in self.tasks if t.flip_perm is not None}
        if perms:
            out["flip_permutations"] = perms
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        model_type = data.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        tasks = data.pop("tasks", None)
        perms = data.pop("flip_permutations", {}) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        if tasks is not None:
            if isinstance(tasks, dict):
                specs = tuple(TaskSpec(n, int(k), perms.get(n)) for n, k in tasks.items())
            else:
                raise ConfigError("config 'tasks' must map task names to keypoint counts")
            stray = sorted(set(perms) - {s.name for s in specs})
            if stray:
                raise ConfigError(f"flip_permutations name unknown tasks: {', '.join(stray)}")
            data["tasks"] = specs
        return cls(**data)

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``config.json`` into ``directory`` atomically; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read a config from ``config.json`` or from a directory that holds one."""
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def card_config(**changes: Any) -> ModelConfig:
    """The published SONICHU-124M architecture."""
    return ModelConfig(**changes)


def tiny_config(**changes: Any) -> ModelConfig:
    """A model small enough to train on a laptop CPU in minutes (tests, demo)."""
    base = dict(
        image_size=(64, 64),
        patch_size=8,
        width=64,
        depth=2,
        num_heads=2,
        deconv_filters=32,
    )
    base.update(changes)
    return ModelConfig(**base)
