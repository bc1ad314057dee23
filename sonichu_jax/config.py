"""Model configuration: the architecture, the task table, and their `config.json` form.

Pure Python (no JAX) so that the converter, the data pipeline and the CLI can read a
checkpoint's configuration without initialising an accelerator backend.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from sonichu_jax.errors import ConfigError, UnknownTaskError
from sonichu_jax.fileio import read_json, write_json

POS_EMBED_KINDS = ("sincos", "learned", "learned_cls_folded")
HEAD_KINDS = ("classic", "simple")
HEAD_SHARING = ("per_task", "shared_trunk")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# Compute options: how a model computes, not what. The same weights give the same
# function under any of them; they are not part of the architecture.
REMAT_KINDS = ("none", "block", "block_save_dots")
ATTENTION_KINDS = ("auto", "xla", "cudnn", "heads_major", "splash")
HEAD_CONV_KINDS = ("matmul", "conv")
DECODERS = ("soft_argmax", "argmax")  # heatmaps -> xy (sonichu_jax.nn.vitpose.decode)
COMPUTE_FIELDS = ("dtype", "remat", "attention", "head_conv")

CONFIG_NAME = "config.json"
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
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


# The card's nine tasks and their keypoint counts (the model card's task table, docs/architecture.md).
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
    decoder: str = "soft_argmax"
    dtype: str = "float32"  # compute dtype; parameters are always float32
    # Compute options (COMPUTE_FIELDS: how the same function is computed; docs/scaling.md).
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
            ("decoder", self.decoder, DECODERS),
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
        return self.grid[0] * self.grid[1]

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
    def from_dict(cls, data: Any) -> "ModelConfig":
        """A config from its ``config.json`` form, every value type-checked (ConfigError
        naming the key and the value); keys that are not ours are an error."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got a {type(data).__name__}")
        data = dict(data)
        model_type = data.pop("model_type", MODEL_TYPE)
        unknown = sorted(set(data) - set(FIELD_TYPES) - {"tasks", "flip_permutations", *CHECKPOINT_KEYS})
        if model_type != MODEL_TYPE:
            raise ConfigError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        fields = {key: check_field(key, data[key]) for key in FIELD_TYPES if key in data}
        tasks = data.get("tasks")
        if tasks is not None:
            fields["tasks"] = task_table(tasks, data.get("flip_permutations"))
        elif data.get("flip_permutations"):
            raise ConfigError("flip_permutations given without a tasks table")
        return cls(**fields)

    def save(self, directory: str | os.PathLike, **extra: Any) -> str:
        """Write ``config.json`` into ``directory`` atomically; returns its path. ``extra``
        adds checkpoint keys (see `CHECKPOINT_KEYS`)."""
        path = os.path.join(directory, CONFIG_NAME)
        write_json(path, {**self.to_dict(), **extra})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read a config from ``config.json`` or from a directory that holds one."""
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        data = read_json(path)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


# -- config.json values -----------------------------------------------------------------
# Keys a checkpoint's config.json may hold beside the architecture: which parts of the
# model hold trained weights (a converted backbone-only checkpoint says ["backbone"]).
CHECKPOINT_KEYS = ("pretrained_parts",)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(minimum: int):
    def check(key: str, value: Any) -> int:
        if not _is_int(value) or value < minimum:
            raise ConfigError(f"config {key} must be an integer >= {minimum}, got {value!r}")
        return value

    return check


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"config {key} must be a number, got {value!r}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config {key} must be true or false, got {value!r}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"config {key} must be a string, got {value!r}")
    return value


def _size(key: str, value: Any) -> tuple[int, int]:
    """(height, width) from [h, w], or from one int for a square (Hugging Face style)."""
    if _is_int(value) and value > 0:
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return value[0], value[1]
    raise ConfigError(f"config {key} must be [height, width] (positive integers) or one integer, got {value!r}")


def _by_default_type(default: Any):
    """The check for a field from the type of its default."""
    if isinstance(default, bool):
        return _bool
    if isinstance(default, int):
        return _int(0)
    if isinstance(default, float):
        return _number
    return _text


# Each ModelConfig field (but the task table) is checked by the type of its default value,
# except the image size and the sizes that must be positive.
_SPECIAL = {"image_size": _size, **dict.fromkeys(("patch_size", "in_channels", "width", "depth", "num_heads",
                                                  "deconv_filters"), _int(1))}
FIELD_TYPES = {f.name: _SPECIAL.get(f.name) or _by_default_type(f.default) for f in dataclasses.fields(ModelConfig)
               if f.name != "tasks"}


def check_field(key: str, value: Any) -> Any:
    """A ModelConfig field's value from its JSON form, or ConfigError naming both."""
    return FIELD_TYPES[key](key, value)


def task_table(tasks: Any, flip_permutations: Any = None, key: str = "tasks") -> tuple[TaskSpec, ...]:
    """Task specs from ``{"name": keypoint count}`` (and ``{"name": [permutation]}``)."""
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError(f"config {key} must map task names to keypoint counts, got {tasks!r}")
    perms = flip_permutations or {}
    if not isinstance(perms, dict):
        raise ConfigError(f"config flip_permutations must map task names to permutations, got {perms!r}")
    stray = sorted(set(perms) - set(tasks))
    if stray:
        raise ConfigError(f"flip_permutations name unknown tasks: {', '.join(stray)}")
    specs = []
    for name, count in tasks.items():
        if not _is_int(count) or count < 1:
            raise ConfigError(f"config {key}.{name} must be a keypoint count (an integer >= 1), got {count!r}")
        perm = perms.get(name)
        if perm is not None and (not isinstance(perm, list) or not all(_is_int(i) for i in perm)):
            raise ConfigError(f"config flip_permutations.{name} must be a list of keypoint indices, got {perm!r}")
        specs.append(TaskSpec(name, count, perm))
    return tuple(specs)


def card_config(**changes: Any) -> ModelConfig:
    """The published SONICHU-124M architecture."""
    return ModelConfig(**changes)


def tiny_config(**changes: Any) -> ModelConfig:
    """A model small enough to train on a laptop CPU in minutes (tests, demo)."""
    return ModelConfig(**{**dict(image_size=(64, 64), patch_size=8, width=64, depth=2, num_heads=2, deconv_filters=32),
                          **changes})
