"""Model configs read from a checkpoint: its config.json (ours, transformers', or any
publisher's, see `config_json`) together with what the tensor shapes say. Every guess
(head count, LayerNorm eps, grid) is a note; a config.json that contradicts the tensors is
an error naming both. Also the reverse for export: a transformers VitPose config.json
from a ModelConfig."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from sonichu_jax.config import CARD_TASKS, ModelConfig, TaskSpec
from sonichu_jax.convert.config_json import ConfigJson, read_config_json
from sonichu_jax.convert.engine import Layout, Options, TensorSource, strip_prefix
from sonichu_jax.errors import InputError
from sonichu_jax.posembed import factor_grid, sincos_2d

HEAD_DIM = 64  # ViT-Ti/S/B/L use 64-wide attention heads
# ...but ViT-H (1280, as in the official I-JEPA ViT-H/14 and H/16 releases) and ViT-g (1408,
# I-JEPA's ViT-g/16) use 16 heads of 80 and 88.
KNOWN_HEADS = {1280: 16, 1408: 16}


@dataclass
class Inferred:
    cfg: ModelConfig
    source_grid: tuple[int, int] | None
    notes: list[str] = field(default_factory=list)
    predictor: dict | None = None  # I-JEPA predictor dimensions, when the file has one


@dataclass
class Tensors:
    """Canonical (prefix-stripped) names -> shapes, and reading one tensor by that name
    (``get`` is None when only headers may be read)."""

    shapes: Mapping[str, tuple[int, ...]]
    get: Callable[[str], np.ndarray] | None

    def count(self, pattern: str) -> int:
        """1 + the largest ``{i}`` in names matching ``pattern`` (0 when none match)."""
        regex = re.compile(re.escape(pattern).replace(r"\{i\}", r"(\d+)"))
        found = [int(m.group(1)) for n in self.shapes if (m := regex.match(n))]
        return max(found) + 1 if found else 0

    def need(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise InputError(f"cannot infer the model config: the checkpoint has no tensor {name}")
        return self.shapes[name]


def _grid_from_hint(hints: Mapping, patch: int) -> tuple[int, int] | None:
    size = hints.get("image_size")
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    return h // patch, w // patch


def infer_backbone(
    t: Tensors,
    *,
    patch: str,
    pos: str,
    block: str,
    fc1: str,
    qkv_bias: str,
    class_slot: bool | None,
    hints: Mapping,
    notes: list[str],
) -> tuple[dict, tuple[int, int] | None]:
    """Encoder fields from shapes. ``block`` is a pattern with ``{i}``; ``fc1`` and
    ``qkv_bias`` are relative to block 0. ``class_slot``: whether the position table has
    a leading class slot (None: decide from the slot count)."""
    width, channels, p, _ = t.need(patch)
    depth = t.count(block)
    block0 = block.format(i=0)
    fields = dict(
        width=width,
        in_channels=channels,
        patch_size=p,
        depth=depth,
        mlp_ratio=t.need(block0 + fc1)[0] / width,
        qkv_bias=block0 + qkv_bias in t.shapes,
    )
    if "num_heads" in hints:
        fields["num_heads"] = int(hints["num_heads"])
    elif width in KNOWN_HEADS:
        fields["num_heads"] = KNOWN_HEADS[width]
        notes.append(f"num_heads {fields['num_heads']} assumed (the ViT-H / ViT-g value for width {width}); "
                     "shapes cannot tell")
    else:
        fields["num_heads"] = max(1, width // HEAD_DIM)
        notes.append(f"num_heads {fields['num_heads']} assumed (width {width} // {HEAD_DIM}); shapes cannot tell")
    grid = _grid_from_hint(hints, p)
    if pos not in t.shapes:
        fields["pos_embed"] = "sincos"
        grid = grid or _grid_from_hint({"image_size": hints.get("fallback_image_size")}, p)
        if grid is None:
            raise InputError("the checkpoint stores no position table and its config.json gives no image_size: "
                             "the model input size must be given")
        return fields, grid
    slots = t.shapes[pos][-2]
    if grid is not None:
        has_slot = slots == grid[0] * grid[1] + 1
    elif class_slot is not None:
        has_slot = class_slot
    else:
        # A slot count one above a nicer grid (257 = 16 * 16 + 1) has a class slot.
        plain, less = factor_grid(slots), factor_grid(slots - 1)
        has_slot = plain[0] > 2 * plain[1] and less[0] <= 2 * less[1]
    if grid is None:
        grid = factor_grid(slots - has_slot)
        notes.append(f"source token grid {grid} guessed from {slots - has_slot} positions (the most nearly square)")
    if has_slot:
        fields["pos_embed"] = "learned_cls_folded"
    elif t.get is None:
        fields["pos_embed"] = "learned"
        notes.append("position table taken as learned (its values were not read, so a fixed sin-cos table "
                     "cannot be told apart)")
    else:
        table = t.get(pos).reshape(-1, width)
        is_sincos = width % 4 == 0 and np.allclose(table, sincos_2d(width, grid), atol=1e-5)
        fields["pos_embed"] = "sincos" if is_sincos else "learned"
    return fields, grid


def infer_mmpose_head(t: Tensors, prefix: str, trunk: str | None = None) -> dict:
    """Head fields from an mmpose ``TopdownHeatmapSimpleHead`` under ``prefix``; the deconv
    trunk is ``trunk`` when shared, else ``{prefix}.deconv_layers``."""
    trunk = trunk or f"{prefix}.deconv_layers"
    num_deconv = sum(1 for j in range(16) if f"{trunk}.{3 * j}.weight" in t.shapes)
    k, filters, kh, _ = t.need(f"{prefix}.final_layer.weight")
    fields = dict(num_keypoints=k, num_deconv=num_deconv)
    if num_deconv == 0:
        if kh != 3:
            raise InputError(f"{prefix}: a head without deconvolutions must end in a 3x3 conv (simple decoder), got {kh}x{kh}")
        fields["head_kind"] = "simple"
    else:
        fields.update(head_kind="classic", deconv_filters=t.need(f"{trunk}.0.weight")[1])
    return fields


def _eps_note(hints: Mapping, notes: list[str], value: str, source: str) -> None:
    if "layer_norm_eps" not in hints:
        notes.append(f"layer_norm_eps {value} assumed ({source})")


def card_order(names) -> list[str]:
    """Task names in a stable order: the card's tasks in the card's order, then the rest
    alphabetically (a file's tensor order says nothing)."""
    card = [t.name for t in CARD_TASKS]
    return sorted(names, key=lambda n: (0, card.index(n), "") if n in card else (1, 0, n))


def _config(fields: dict, tasks: tuple[TaskSpec, ...], image_grid, **extra) -> ModelConfig:
    fields = {k: v for k, v in fields.items() if k != "num_keypoints"}
    fields.update(extra)
    fields["image_size"] = (image_grid[0] * fields["patch_size"], image_grid[1] * fields["patch_size"])
    if fields.get("head_kind") == "simple":
        fields.pop("num_deconv", None)
    return ModelConfig(tasks=tasks, **fields)


def fused_backbone(t: Tensors, prefix: str, class_slot: bool | None, hints: Mapping, notes: list[str]):
    """`infer_backbone` of a timm / I-JEPA / mmpose-named ViT (fused qkv) under ``prefix``."""
    return infer_backbone(t, patch=f"{prefix}patch_embed.proj.weight", pos=f"{prefix}pos_embed",
                          block=f"{prefix}blocks.{{i}}.", fc1="mlp.fc1.weight", qkv_bias="attn.qkv.bias",
                          class_slot=class_slot, hints=hints, notes=notes)


def infer_sonichu(t: Tensors, hints: Mapping, task_name: str, options: Options) -> Inferred:
    notes: list[str] = []
    fields, grid = fused_backbone(t, "backbone.", None, hints, notes)
    tasks = card_order(n.split(".")[1] for n in t.shapes if re.match(r"heads\.[^.]+\.final_layer\.weight\Z", n))
    shared = any(n.startswith("head_trunk.") for n in t.shapes)
    head = {}
    specs = []
    for task in tasks:
        head = infer_mmpose_head(t, f"heads.{task}", "head_trunk.deconv_layers" if shared else None)
        specs.append(TaskSpec(task, head["num_keypoints"]))
    if not specs:  # a backbone in the sonichu layout: the card's heads, freshly initialised
        specs = list(CARD_TASKS)
    _eps_note(hints, notes, "1e-6", "the I-JEPA / ViTPose value")
    head_sharing = "shared_trunk" if shared else "per_task"
    return Inferred(_config({**fields, **head}, tuple(specs), grid, head_sharing=head_sharing), grid, notes)


def infer_vitpose(t: Tensors, hints: Mapping, task_name: str, options: Options) -> Inferred:
    notes: list[str] = []
    _eps_note(hints, notes, "1e-6", "the official ViTPose value")
    fields, grid = fused_backbone(t, "backbone.", True, hints, notes)
    head = infer_mmpose_head(t, "keypoint_head")
    tasks = (TaskSpec(task_name, head["num_keypoints"]),)
    return Inferred(_config({**fields, **head}, tasks, grid, patch_padding=2), grid, notes)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, float)) else tuple(int(v) for v in value)


def infer_hf_vitpose(t: Tensors, hints: Mapping, task_name: str, options: Options) -> Inferred:
    """From transformers' config.json (``model_type: vitpose``), else from shapes."""
    notes: list[str] = []
    if hints.get("model_type") != "vitpose":
        notes.append("no transformers config.json: config inferred from tensor shapes; "
                     "layer_norm_eps 1e-12 assumed (transformers' default)")
        fields, grid = infer_backbone(
            t, patch="backbone.embeddings.patch_embeddings.projection.weight",
            pos="backbone.embeddings.position_embeddings", block="backbone.encoder.layer.{i}.",
            fc1="mlp.fc1.weight", qkv_bias="attention.attention.query.bias", class_slot=True, hints=hints, notes=notes,
        )
        classic = "head.deconv1.weight" in t.shapes
        k = t.need("head.conv.weight")[0]
        head = dict(head_kind="classic" if classic else "simple", layer_norm_eps=1e-12)
        tasks = (TaskSpec(task_name, k),)
        return Inferred(_config({**fields, **head}, tasks, grid, patch_padding=2), grid, notes)
    bc = hints.get("backbone_config") or {}
    if int(bc.get("num_experts", 1)) > 1:
        raise InputError(f"VitPose+ with {bc['num_experts']} experts (mixture-of-experts MLP) is not supported")
    depth = int(bc.get("num_hidden_layers", 12))
    out = bc.get("out_indices") or [depth]
    if list(out)[-1] not in (depth, -1):
        raise InputError(f"this VitPose reads features after layer {out[-1]} of {depth} (out_indices); "
                         "only the last layer's features are supported")
    ph, pw = _pair(bc.get("patch_size", 16))
    if ph != pw:
        raise InputError(f"non-square patches {ph}x{pw} are not supported")
    h, w = _pair(bc.get("image_size", (256, 192)))
    simple = bool(hints.get("use_simple_decoder", True))
    if simple and int(hints.get("scale_factor", 4)) != 4:
        raise InputError(f"simple decoder with scale_factor {hints['scale_factor']}: only 4 is supported")
    num_labels = int(hints["num_labels"]) if "num_labels" in hints else len(hints.get("id2label") or {}) or None
    if num_labels is None:
        num_labels = t.need("head.conv.weight")[0]
    width = int(bc.get("hidden_size", 768))
    cfg = ModelConfig(
        image_size=(h, w), patch_size=ph, in_channels=int(bc.get("num_channels", 3)), width=width, depth=depth,
        num_heads=int(bc.get("num_attention_heads", 12)), mlp_ratio=float(bc.get("mlp_ratio", 4)),
        qkv_bias=bool(bc.get("qkv_bias", True)), layer_norm_eps=float(bc.get("layer_norm_eps", 1e-12)),
        pos_embed="learned_cls_folded", patch_padding=2, head_kind="simple" if simple else "classic",
        tasks=(TaskSpec(task_name, num_labels),),
    )
    return Inferred(cfg, cfg.grid, notes)


def _backbone_only_config(fields: dict, grid, hints: Mapping, notes: list[str]) -> ModelConfig:
    """The card's heads on an encoder-only checkpoint (they start freshly initialised)."""
    _eps_note(hints, notes, "1e-6", "the timm / I-JEPA value")
    return _config(fields, CARD_TASKS, grid)


def infer_timm(t: Tensors, hints: Mapping, task_name: str, options: Options) -> Inferred:
    notes: list[str] = []
    fields, grid = fused_backbone(t, "", "cls_token" in t.shapes and "no_embed_class" not in hints, hints, notes)
    if fields["pos_embed"] == "learned_cls_folded":
        fields["pos_embed"] = "learned"  # timm's slot belongs to its class token, which we drop
    return Inferred(_backbone_only_config(fields, grid, hints, notes), grid, notes)


def infer_ijepa(t: Tensors, hints: Mapping, task_name: str, options: Options) -> Inferred:
    notes: list[str] = []
    fields, grid = fused_backbone(t, f"{options.encoder}.", False, hints, notes)
    cfg = _backbone_only_config(fields, grid, hints, notes)
    predictor = None
    if "predictor.predictor_embed.weight" in t.shapes:
        predictor = dict(
            width=t.shapes["predictor.predictor_embed.weight"][0],
            depth=t.count("predictor.predictor_blocks.{i}."),
            num_heads=cfg.num_heads,
        )
    return Inferred(cfg, grid, notes, predictor)


# Fields the tensors decide; a config.json that says otherwise is wrong, not a preference.
BACKBONE_SHAPE_FIELDS = ("width", "depth", "patch_size", "in_channels", "mlp_ratio", "qkv_bias")
HEAD_SHAPE_FIELDS = ("head_kind", "head_sharing", "num_deconv", "deconv_filters")


def tensor_view(source: TensorSource, layout: Layout, read_values: bool = True) -> Tensors:
    """The source's tensors under the layout's canonical (prefix-stripped) names."""
    names = list(source.keys())
    prefix = strip_prefix(names)
    canonical = {layout.canonical(n[len(prefix) :]): n for n in names}
    get = (lambda c: source.get(canonical[c])) if read_values else None
    return Tensors({c: tuple(source.shape(n)) for c, n in canonical.items()}, get)


def infer_config(
    source: TensorSource, layout: Layout, config: Mapping | None = None, task_name: str = "keypoints",
    options: Options | None = None, *, overrides: Mapping | None = None, read_values: bool = True,
) -> Inferred:
    """The config of the model a checkpoint holds, from its ``config`` (the config.json
    dict, any publisher's) and its tensors. ``overrides``: ``num_heads`` / ``image_size``
    given by the user, which win (a learned table of another grid is resized to that
    image size). ``read_values=False`` reads headers only."""
    overrides = dict(overrides or {})
    options = options or Options()
    config = config or {}
    if layout.foreign_config is not None and config.get("model_type") == layout.foreign_config:
        inferred = layout.infer(tensor_view(source, layout, read_values), config, task_name, options)
        return _override(inferred, overrides)
    parsed = read_config_json(config)
    if parsed.ours:
        cfg = ModelConfig.from_dict(dict(config))
        return _override(Inferred(cfg, cfg.grid, ["config from the checkpoint's config.json"]), overrides)
    if layout.infer is None:
        return _override(_from_fields(parsed, layout), overrides)
    hints = dict(parsed.fields)
    if "num_heads" in overrides:
        hints["num_heads"] = overrides["num_heads"]
    hints["fallback_image_size"] = overrides.get("image_size")
    inferred = layout.infer(tensor_view(source, layout, read_values), hints, task_name, options)
    notes = list(parsed.notes) + inferred.notes
    settled = sorted(parsed.fields) + ([parsed.tasks_key] if parsed.tasks else [])
    notes.insert(0, "architecture inferred from tensor shapes" + ("" if config else " (no config.json)")
                 + (f"; from config.json: {', '.join(settled)}" if settled else ""))
    cfg = _reconcile(inferred.cfg, parsed, layout, notes)
    return _override(Inferred(cfg, inferred.source_grid, notes, inferred.predictor), overrides)


def _from_fields(parsed: ConfigJson, layout: Layout) -> Inferred:
    """A config from config.json alone, for layouts whose tensors say nothing (Flax)."""
    fields = dict(parsed.fields)
    if parsed.tasks:
        fields["tasks"] = parsed.tasks
    cfg = ModelConfig(**fields)
    return Inferred(cfg, cfg.grid, parsed.notes + [f"layout {layout.name}: config from config.json, defaults elsewhere"])


def _reconcile(inferred: ModelConfig, parsed: ConfigJson, layout: Layout, notes: list[str]) -> ModelConfig:
    """Inferred fields, overridden by config.json where the tensors cannot tell; an error
    where config.json contradicts them."""
    decided = BACKBONE_SHAPE_FIELDS + (HEAD_SHAPE_FIELDS if layout.provides is None else ())
    clashes = [f"{k} {parsed.fields[k]!r} (the tensors say {getattr(inferred, k)!r})"
               for k in decided if k in parsed.fields and parsed.fields[k] != getattr(inferred, k)]
    if clashes:
        raise InputError("config.json contradicts the checkpoint's tensors: " + "; ".join(clashes))
    free = {k: v for k, v in parsed.fields.items() if k not in decided}
    tasks = inferred.tasks
    if parsed.tasks is not None:
        if layout.provides is None:
            tasks = _agree(parsed, inferred.tasks)
        else:
            tasks = parsed.tasks
            notes.append(f"heads from the task table in config.json ({parsed.tasks_key}); they start freshly initialised")
    elif layout.provides is not None:
        notes.append(f"backbone only: the card's {len(CARD_TASKS)} tasks, whose heads start freshly initialised")
    return inferred.replace(**free, tasks=tasks)


def _agree(parsed: ConfigJson, from_heads: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
    """config.json's task table, checked against the head tensors (a one-head checkpoint
    takes the table's one name)."""
    table = {t.name: t.num_keypoints for t in parsed.tasks}
    heads = {t.name: t.num_keypoints for t in from_heads}
    if len(table) == len(heads) == 1 and list(table.values()) == list(heads.values()):
        return parsed.tasks
    problems = [f"{n} has {k} keypoints in config.json, {heads[n]} in its head tensors"
                for n, k in table.items() if n in heads and heads[n] != k]
    problems += [f"{n} is in config.json but has no head tensors" for n in table if n not in heads]
    problems += [f"{n} has head tensors but is not in config.json" for n in heads if n not in table]
    if problems:
        raise InputError(f"config.json's task table ({parsed.tasks_key}) disagrees with the heads: " + "; ".join(problems))
    return parsed.tasks


def _override(inferred: Inferred, overrides: Mapping) -> Inferred:
    if overrides:
        inferred.cfg = inferred.cfg.replace(**{k: tuple(v) if k == "image_size" else v for k, v in overrides.items()})
    return inferred


def hf_vitpose_config(cfg: ModelConfig) -> dict:
    """transformers' config.json for a one-head model, or InputError naming what
    transformers' VitPose cannot express."""
    problems = []
    if len(cfg.tasks) != 1:
        problems.append(f"it has {len(cfg.tasks)} tasks (VitPose has one head)")
    if cfg.patch_padding != 2:
        problems.append(f"its patch conv padding is {cfg.patch_padding} (VitPose hard-codes 2)")
    if cfg.head_kind == "classic" and (cfg.num_deconv, cfg.deconv_filters) != (2, 256):
        problems.append(f"its head has {cfg.num_deconv} deconvs of {cfg.deconv_filters} (VitPose: 2 of 256)")
    if cfg.batch_norm_eps != 1e-5:
        problems.append(f"its BatchNorm eps is {cfg.batch_norm_eps} (VitPose: 1e-5)")
    if cfg.mlp_ratio != int(cfg.mlp_ratio):
        problems.append(f"its MLP ratio {cfg.mlp_ratio} is not an integer")
    if problems:
        raise InputError("cannot export as transformers VitPose: " + "; ".join(problems))
    k = cfg.tasks[0].num_keypoints
    labels = {str(i): f"LABEL_{i}" for i in range(k)}
    return {
        "architectures": ["VitPoseForPoseEstimation"],
        "model_type": "vitpose",
        "backbone_config": {
            "model_type": "vitpose_backbone",
            "image_size": list(cfg.image_size),
            "patch_size": [cfg.patch_size, cfg.patch_size],
            "num_channels": cfg.in_channels,
            "hidden_size": cfg.width,
            "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.num_heads,
            "mlp_ratio": int(cfg.mlp_ratio),
            "layer_norm_eps": cfg.layer_norm_eps,
            "qkv_bias": cfg.qkv_bias,
            "hidden_act": "gelu",
            "out_indices": [cfg.depth],
        },
        "use_simple_decoder": cfg.head_kind == "simple",
        "scale_factor": 4,
        "id2label": labels,
        "label2id": {v: int(i) for i, v in labels.items()},
    }
