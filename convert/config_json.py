"""A checkpoint's ``config.json`` as we read it: our own keys (type-checked), the common
Hugging Face architecture keys that mean the same (``hidden_size`` -> width, ...), a
keypoint table under a recognisable key, and notes for everything else: nothing in a
publisher's config.json beyond a wrong value type is an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sonichu_jax.config import (
    CHECKPOINT_KEYS, COMPUTE_FIELDS, FIELD_TYPES, MODEL_TYPE, TaskSpec, check_field, task_table,
)
from sonichu_jax.errors import ConfigError

# Hugging Face names of our architecture fields.
COMMON_KEYS = {
    "hidden_size": "width",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "num_channels": "in_channels",
}
# Where publishers keep a task -> keypoint count table, besides our "tasks".
TASK_TABLE_KEYS = ("tasks", "keypoints", "num_keypoints", "task_keypoints", "keypoints_per_task",
                   "num_keypoints_per_task", "keypoint_counts", "task_num_keypoints")


@dataclass
class ConfigJson:
    fields: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields (ours, then common keys)
    tasks: tuple[TaskSpec, ...] | None = None  # the keypoint table, when the file has one
    tasks_key: str = ""  # the key it was found under
    notes: list[str] = field(default_factory=list)
    ours: bool = False  # model_type sonichu and nothing but our keys: read exactly as written


def read_config_json(data: Any) -> ConfigJson:
    """Split a config.json dict into what we use and notes on what we do not."""
    if not data:
        return ConfigJson()
    if not isinstance(data, dict):
        raise ConfigError(f"config.json must hold a JSON object, got a {type(data).__name__}")
    out = ConfigJson()
    known = set(FIELD_TYPES) | {"model_type", "tasks", "flip_permutations", *CHECKPOINT_KEYS}
    foreign = [k for k in data if k not in known]
    out.ours = data.get("model_type") == MODEL_TYPE and not foreign
    patch = data.get("patch_size")
    if not out.ours and isinstance(patch, list) and len(patch) == 2 and patch[0] == patch[1]:
        data = {**data, "patch_size": patch[0]}  # Hugging Face writes [p, p]
    # In another project's config.json "dtype" is the dtype the weights were stored in, not
    # ours to compute in; the compute options are only read from our own configs.
    usable = FIELD_TYPES.keys() - (set() if out.ours else set(COMPUTE_FIELDS))
    out.fields = {k: check_field(k, v) for k, v in data.items() if k in usable}
    for key, ours in COMMON_KEYS.items():
        if key in data and ours not in out.fields:
            out.fields[ours] = FIELD_TYPES[ours](key, data[key])  # the message names the file's key
    if "intermediate_size" in data and "mlp_ratio" not in out.fields and "width" in out.fields:
        out.fields["mlp_ratio"] = FIELD_TYPES["width"]("intermediate_size", data["intermediate_size"]) / out.fields["width"]
    table_key = next((k for k in TASK_TABLE_KEYS if isinstance(data.get(k), dict)), None)
    if table_key is not None:
        out.tasks = task_table(data[table_key], data.get("flip_permutations"), key=table_key)
        out.tasks_key = table_key
    parts = data.get("pretrained_parts")  # checked here, read by `loading`
    if parts is not None and (not isinstance(parts, list) or not all(isinstance(p, str) for p in parts)):
        raise ConfigError(f"config pretrained_parts must be a list of part names, got {parts!r}")
    used = set(COMMON_KEYS) | {"intermediate_size", table_key}
    ignored = [k for k in foreign if k not in used]
    if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        out.notes.append(f"config.json model_type {data['model_type']!r} is not {MODEL_TYPE!r}")
    if ignored:
        out.notes.append(f"config.json keys not ours, ignored: {', '.join(ignored)}")
    return out
