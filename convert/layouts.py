"""The checkpoint layouts this project reads and writes, and their detection. Each layout's
table (rules, ignores, refusals: `convert.rules`) is built per model config: head names
depend on the task table, the position-table transform on the grids."""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from sonichu_jax.config import CONFIG_NAME, ModelConfig, card_config
from sonichu_jax.convert import infer
from sonichu_jax.convert.engine import Layout, Options, export_tensors, strip_prefix
from sonichu_jax.convert.rules import Ignore, Refuse, Rule
from sonichu_jax.convert.transforms import (
    CLASS_SLOT_ALWAYS,
    CLASS_SLOT_DROP,
    CLASS_SLOT_OPTIONAL,
    CONV,
    DECONV,
    FUSED_QKV_BIAS,
    FUSED_QKV_LINEAR,
    IDENTITY,
    LINEAR,
    position_table,
)
from sonichu_jax.convert.files import TORCH_WEIGHTS_NAME
from sonichu_jax.convert.safetensors_io import write_safetensors
from sonichu_jax.convert.summary import human_count, top_level
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import write_json

_NORM_PARAMS = (("weight", "scale", IDENTITY), ("bias", "bias", IDENTITY))
_BN_PARAMS = _NORM_PARAMS + (("running_mean", "mean", IDENTITY), ("running_var", "var", IDENTITY))
_DENSE_PARAMS = (("weight", "kernel", LINEAR), ("bias", "bias", IDENTITY))
_CONV_PARAMS = (("weight", "kernel", CONV), ("bias", "bias", IDENTITY))

BN_COUNTER = Ignore(r"\.num_batches_tracked\Z", "BatchNorm update counter; Flax keeps none")
MOE_EXPERTS = Refuse(
    r"\.mlp\.experts\.",
    "ViTPose+ mixture-of-experts MLP (per-dataset expert layers) is not supported; "
    "convert a plain ViTPose checkpoint",
)


def expand(source: str, target: str, params) -> list[Rule]:
    return [Rule(f"{source}.{s}", f"{target}/{t}", tf) for s, t, tf in params]


def table_rule(src: str, dst: str, cfg: ModelConfig, options: Options, class_slot: str) -> Rule:
    fixed = cfg.pos_embed == "sincos"
    return Rule(src, dst, position_table(cfg.grid, options.source_grid, class_slot, fixed_sincos=fixed))


def block_rules(block: str, fblock: str, norm1="norm1", proj="attn.proj", norm2="norm2") -> list[Rule]:
    """Our ViT block under ``fblock`` from PyTorch names under ``block``, all but q/k/v."""
    rules = expand(f"{block}.{norm1}", f"{fblock}/norm1", _NORM_PARAMS)
    rules += expand(f"{block}.{proj}", f"{fblock}/attn/proj", _DENSE_PARAMS)
    rules += expand(f"{block}.{norm2}", f"{fblock}/norm2", _NORM_PARAMS)
    rules += expand(f"{block}.mlp.fc1", f"{fblock}/mlp/fc1", _DENSE_PARAMS)
    return rules + expand(f"{block}.mlp.fc2", f"{fblock}/mlp/fc2", _DENSE_PARAMS)


def fused_qkv_block_rules(block: str, fblock: str) -> list[Rule]:
    """Our fused-qkv ViT block under ``fblock`` from timm / I-JEPA / mmpose names under ``block``."""
    return block_rules(block, fblock) + expand(f"{block}.attn.qkv", f"{fblock}/attn/qkv", _DENSE_PARAMS)


def vit_backbone_rules(
    src: str, dst: str, final_norm_names: tuple[str, ...], cfg: ModelConfig, options: Options, class_slot: str
) -> list[Rule]:
    """A timm/I-JEPA/mmpose-named ViT (fused qkv) under ``src`` (may be '') -> our encoder
    under ``dst``. The first final-norm name is the one export writes; others are aliases."""
    dot = f"{src}." if src else ""
    rules = expand(f"{dot}patch_embed.proj", f"{dst}/patch_embed/proj", _CONV_PARAMS)
    rules.append(table_rule(f"{dot}pos_embed", f"{dst}/pos_embed", cfg, options, class_slot))
    rules += fused_qkv_block_rules(f"{dot}blocks.{{i}}", f"{dst}/blocks/{{i}}")
    for norm in final_norm_names:
        rules += expand(f"{dot}{norm}", f"{dst}/norm", _NORM_PARAMS)
    return rules


def deconv_trunk_rules(src: str, dst: str, num_deconv: int) -> list[Rule]:
    """mmpose ``deconv_layers`` (Sequential of deconv, BN, ReLU triples) -> DeconvTrunk."""
    rules = []
    for j in range(num_deconv):
        rules.append(Rule(f"{src}.{3 * j}.weight", f"{dst}/deconvs/{j}/kernel", DECONV))
        rules += expand(f"{src}.{3 * j + 1}", f"{dst}/norms/{j}", _BN_PARAMS)
    return rules


def bn_counters(exported: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch BatchNorm's ``num_batches_tracked`` for every exported BatchNorm: strict
    loading needs it, Flax has none, and eval-mode outputs never read it."""
    return {
        name[: -len("running_mean")] + "num_batches_tracked": np.zeros((), np.int64)
        for name in exported
        if name.endswith(".running_mean")
    }


# -- sonichu: I-JEPA encoder names under backbone.*, mmpose heads per task ----------------
def sonichu_table(cfg: ModelConfig, options: Options) -> list:
    rules = vit_backbone_rules("backbone", "backbone", ("norm", "last_norm"), cfg, options, CLASS_SLOT_OPTIONAL)
    if cfg.head_sharing == "shared_trunk":
        rules += deconv_trunk_rules("head_trunk.deconv_layers", "trunk", cfg.num_deconv)
    elif cfg.head_kind == "classic":
        rules += deconv_trunk_rules("heads.{task}.deconv_layers", "heads/{task}/trunk", cfg.num_deconv)
    rules += expand("heads.{task}.final_layer", "heads/{task}/final", _CONV_PARAMS)
    return rules + [BN_COUNTER]


SONICHU = Layout(
    name="sonichu",
    description="Sonichu PyTorch: I-JEPA encoder names under backbone.*, mmpose heads under heads.{task}.*",
    table=sonichu_table,
    # heads optional: a backbone saved in this layout loads with fresh heads
    detect=lambda names: any(n.startswith("backbone.blocks.") for n in names)
    and not any(n.startswith(("keypoint_head.", "associate_")) for n in names),
    export_extras=bn_counters,
    infer=infer.infer_sonichu,
)

# -- flax: this project's own files ---------------------------------------------------------
FLAX = Layout(
    name="flax",
    description="this project's own checkpoints: tensors named by their Flax state path",
    table=lambda cfg, options: [Rule("{path}", "{path}", IDENTITY)],
    detect=lambda names: all("/" in n for n in names),
)


# -- vitpose: official mmpose ViTPose files -----------------------------------------------
def vitpose_table(cfg: ModelConfig, options: Options) -> list:
    task = cfg.tasks[0].name  # a one-head layout holds the first task's head
    rules = vit_backbone_rules("backbone", "backbone", ("last_norm", "norm"), cfg, options, CLASS_SLOT_ALWAYS)
    trunk = "trunk" if cfg.head_sharing == "shared_trunk" else f"heads/{task}/trunk"
    if cfg.head_kind == "classic":
        rules += deconv_trunk_rules("keypoint_head.deconv_layers", trunk, cfg.num_deconv)
    rules += expand("keypoint_head.final_layer", f"heads/{task}/final", _CONV_PARAMS)
    return rules + [
        BN_COUNTER,
        Ignore(r"^backbone\.cls_token\Z", "unused class token: ViTPose folds its position slot into the patches instead"),
        MOE_EXPERTS,
        Refuse(r"^associate_\w*heads?\.", "ViTPose+ per-dataset extra heads are not supported"),
    ]


VITPOSE = Layout(
    name="vitpose",
    description="official ViTPose (mmpose): backbone.* with padding-2 patches and a folded class slot, keypoint_head.*",
    table=vitpose_table,
    detect=lambda names: any(n.startswith("backbone.blocks.") for n in names)
    and any(n.startswith(("keypoint_head.", "associate_")) for n in names),
    export_extras=bn_counters,
    infer=infer.infer_vitpose,
)


# -- hf-vitpose: transformers VitPoseForPoseEstimation --------------------------------------
def hf_vitpose_table(cfg: ModelConfig, options: Options) -> list:
    task = cfg.tasks[0].name  # a one-head layout holds the first task's head
    emb = "backbone.embeddings"
    rules = expand(f"{emb}.patch_embeddings.projection", "backbone/patch_embed/proj", _CONV_PARAMS)
    rules.append(table_rule(f"{emb}.position_embeddings", "backbone/pos_embed", cfg, options, CLASS_SLOT_ALWAYS))
    layer, block = "backbone.encoder.layer.{i}", "backbone/blocks/{i}"
    attn = f"{layer}.attention.attention"
    rules += block_rules(layer, block, "layernorm_before", "attention.output.dense", "layernorm_after")
    rules.append(Rule(tuple(f"{attn}.{p}.weight" for p in ("query", "key", "value")), f"{block}/attn/qkv/kernel", FUSED_QKV_LINEAR))
    rules.append(Rule(tuple(f"{attn}.{p}.bias" for p in ("query", "key", "value")), f"{block}/attn/qkv/bias", FUSED_QKV_BIAS))
    rules += expand("backbone.layernorm", "backbone/norm", _NORM_PARAMS)
    if cfg.head_kind == "classic":
        trunk = "trunk" if cfg.head_sharing == "shared_trunk" else f"heads/{task}/trunk"
        for j in range(cfg.num_deconv):
            rules.append(Rule(f"head.deconv{j + 1}.weight", f"{trunk}/deconvs/{j}/kernel", DECONV))
            rules += expand(f"head.batchnorm{j + 1}", f"{trunk}/norms/{j}", _BN_PARAMS)
    rules += expand("head.conv", f"heads/{task}/final", _CONV_PARAMS)
    return rules + [BN_COUNTER, MOE_EXPERTS]


HF_VITPOSE = Layout(
    name="hf-vitpose",
    description="transformers VitPoseForPoseEstimation: separate q/k/v, layernorm_before/after, head.deconv1/...",
    table=hf_vitpose_table,
    detect=lambda names: any(n.startswith(("backbone.encoder.layer.", "backbone.embeddings.")) for n in names),
    export_extras=bn_counters,
    infer=infer.infer_hf_vitpose,
    foreign_config="vitpose",
)


# -- timm-vit: a timm VisionTransformer, backbone only --------------------------------------
def timm_table(cfg: ModelConfig, options: Options) -> list:
    return vit_backbone_rules("", "backbone", ("norm",), cfg, options, CLASS_SLOT_DROP) + [
        Ignore(r"^cls_token\Z", "class token: this encoder has none (patch features differ from timm's "
               "wherever the class token took part in attention)"),
        Ignore(r"^(head|fc_norm)\.", "classifier head: not part of a keypoint model"),
        Refuse(r"\.ls[12]\.gamma\Z", "layer scale (ls1/ls2) is not supported by this encoder"),
        Refuse(r"\.attn\.[qk]_norm\.", "q/k normalisation (q_norm/k_norm) is not supported by this encoder"),
        Refuse(r"^reg_token\Z", "register tokens are not supported by this encoder"),
        Refuse(r"^norm_pre\.", "a pre-encoder norm (CLIP-style norm_pre) is not supported by this encoder"),
    ]


TIMM_VIT = Layout(
    name="timm-vit",
    description="timm VisionTransformer (backbone only): patch_embed, pos_embed, blocks.{i}, norm",
    table=timm_table,
    detect=lambda names: "patch_embed.proj.weight" in names and any(n.startswith("blocks.") for n in names),
    provides=("backbone/",),
    infer=infer.infer_timm,
)


# -- ijepa: the official I-JEPA training checkpoint -----------------------------------------
IJEPA_PARTS = ("encoder", "target_encoder", "predictor")


def ijepa_table(cfg: ModelConfig, options: Options) -> list:
    if options.encoder not in IJEPA_PARTS[:2]:
        raise InputError(f"the I-JEPA encoder to load must be 'encoder' or 'target_encoder', got {options.encoder!r}")
    other = "encoder" if options.encoder == "target_encoder" else "target_encoder"
    rules = vit_backbone_rules(options.encoder, "backbone", ("norm",), cfg, options, CLASS_SLOT_OPTIONAL)
    pred = "predictor"
    rules += expand(f"{pred}.predictor_embed", "predictor/embed", _DENSE_PARAMS)
    rules.append(Rule(f"{pred}.mask_token", "predictor/mask_token", IDENTITY))
    # The official predictor's table is a fixed sin-cos one: recomputed for another grid.
    rules.append(Rule(f"{pred}.predictor_pos_embed", "predictor/pos_embed",
                      position_table(cfg.grid, options.source_grid, CLASS_SLOT_OPTIONAL, fixed_sincos=True)))
    rules += fused_qkv_block_rules(f"{pred}.predictor_blocks.{{i}}", "predictor/blocks/{i}")
    rules += expand(f"{pred}.predictor_norm", "predictor/norm", _NORM_PARAMS)
    rules += expand(f"{pred}.predictor_proj", "predictor/proj", _DENSE_PARAMS)
    return rules + [
        Ignore(rf"^{other}\.", f"the other encoder ({other}); the encoder option chooses which becomes the backbone"),
        Ignore(r"^(opt|scaler)\.", "optimiser / loss-scaler state"),
    ]


def _ijepa_canonical(name: str) -> str:
    # The official trainer wraps each network in DistributedDataParallel: "encoder.module.blocks.0..."
    return re.sub(r"^(encoder|target_encoder|predictor)\.module\.", r"\1.", name)


IJEPA = Layout(
    name="ijepa",
    description="I-JEPA training checkpoint: encoder / target_encoder / predictor (module. prefixes)",
    table=ijepa_table,
    detect=lambda names: any(n.startswith("predictor.") for n in names)
    and any(n.startswith(("encoder.", "target_encoder.")) for n in names),
    provides=("backbone/", "predictor/"),
    canonical=_ijepa_canonical,
    infer=infer.infer_ijepa,
)

# Detection order matters only where detectors overlap: none of these do.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (FLAX, SONICHU, VITPOSE, HF_VITPOSE, TIMM_VIT, IJEPA)
}


def layout_coverage(names, layout: Layout) -> tuple[int, list[str]]:
    """How many of ``names`` (prefix-stripped) a layout's table knows (as a rule, an ignore
    or a refusal), and the names it does not."""
    entries = layout.table(card_config(), Options())
    known, unknown = 0, []
    for name in names:
        name = layout.canonical(name)
        if any(e.match_source(name) if isinstance(e, Rule) else e.matches(name) for e in entries):
            known += 1
        else:
            unknown.append(name)
    return known, unknown


def _no_layout(names: list[str], shapes: dict) -> InputError:
    """The error for names no layout recognises: what the file holds and the nearest layout."""
    prefix = strip_prefix(names)
    stripped = [n[len(prefix) :] for n in names]
    groups = top_level({n: shapes.get(n, ()) for n in stripped})
    total = sum(g.params for g in groups)
    held = "; ".join(g.describe() for g in groups[:12]) + ("; ..." if len(groups) > 12 else "")
    scores = {name: layout_coverage(stripped, layout) for name, layout in LAYOUTS.items() if name != "flax"}
    best = max(scores, key=lambda k: scores[k][0])
    known, unknown = scores[best]
    missing = f"not e.g. {', '.join(unknown[:3])}" if unknown else "but too few of its tensors for a model"
    nearest = (f"Nearest layout: {best} ({known} of {len(names)} names known; {missing})"
               if known else "No layout knows any of these names")
    return InputError(
        f"cannot tell the checkpoint layout from its tensor names. It holds {len(names)} tensors "
        f"({human_count(total)} parameters): {held}. {nearest}. Rename the tensors to a known layout "
        f"(see docs/checkpoints.md) or name the layout; layouts: {', '.join(LAYOUTS)}"
    )


def detect_layout(source, requested: str | None = None) -> Layout:
    """The layout named by ``requested``, else the first whose detector accepts the names
    of ``source`` (a tensor source, or just names)."""
    if requested is not None:
        if requested not in LAYOUTS:
            raise InputError(f"unknown layout {requested!r}; known layouts: {', '.join(LAYOUTS)}")
        return LAYOUTS[requested]
    names = list(source.keys()) if hasattr(source, "keys") else list(source)
    prefix = strip_prefix(names)
    stripped = {n[len(prefix) :] for n in names}
    for layout in LAYOUTS.values():
        if names and layout.detect(stripped):
            return layout
    shapes = {n[len(prefix) :]: tuple(source.shape(n)) for n in names} if hasattr(source, "shape") else {}
    raise _no_layout(names, shapes)

# The PyTorch layouts a model can be written in.
EXPORT_LAYOUTS = ("sonichu", "hf-vitpose")


def write_pytorch(flat: Mapping[str, np.ndarray], cfg: ModelConfig, directory: str | os.PathLike, layout: str) -> None:
    """Flax arrays by path -> ``model.safetensors`` + ``config.json`` in ``layout``."""
    if layout not in EXPORT_LAYOUTS:
        raise InputError(f"cannot export to layout {layout!r}; choose one of {', '.join(EXPORT_LAYOUTS)}")
    config = infer.hf_vitpose_config(cfg) if layout == "hf-vitpose" else cfg.to_dict()
    tensors = export_tensors(flat, LAYOUTS[layout], cfg)
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, TORCH_WEIGHTS_NAME), tensors, metadata={"format": "pt", "layout": layout})
    write_json(os.path.join(directory, CONFIG_NAME), config)
