"""The checkpoint layouts this project reads and writes, and their detection."""

from __future__ import annotations

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert.layout import Layout, strip_prefix
from sonichu_jax.convert.rules import Ignore, Rule
from sonichu_jax.convert.transforms import CONV, DECONV, IDENTITY, LINEAR, POSITION_TABLE
from sonichu_jax.errors import InputError

_NORM_PARAMS = (("weight", "scale", IDENTITY), ("bias", "bias", IDENTITY))
_BN_PARAMS = _NORM_PARAMS + (("running_mean", "mean", IDENTITY), ("running_var", "var", IDENTITY))
_DENSE_PARAMS = (("weight", "kernel", LINEAR), ("bias", "bias", IDENTITY))
_CONV_PARAMS = (("weight", "kernel", CONV), ("bias", "bias", IDENTITY))

BN_COUNTER = Ignore(r"\.num_batches_tracked\Z", "BatchNorm update counter; Flax keeps none")


def expand(source: str, target: str, params) -> list[Rule]:
    return [Rule(f"{source}.{s}", f"{target}/{t}", tf) for s, t, tf in params]


def vit_backbone_rules(src: str, dst: str, final_norm_names: tuple[str, ...]) -> list[Rule]:
    """A timm/I-JEPA-named ViT (fused qkv) under ``src`` -> our encoder under ``dst``."""
    rules = expand(f"{src}.patch_embed.proj", f"{dst}/patch_embed/proj", _CONV_PARAMS)
    rules.append(Rule(f"{src}.pos_embed", f"{dst}/pos_embed", POSITION_TABLE))
    block, fblock = f"{src}.blocks.{{i}}", f"{dst}/blocks/{{i}}"
    rules += expand(f"{block}.norm1", f"{fblock}/norm1", _NORM_PARAMS)
    rules += expand(f"{block}.attn.qkv", f"{fblock}/attn/qkv", _DENSE_PARAMS)
    rules += expand(f"{block}.attn.proj", f"{fblock}/attn/proj", _DENSE_PARAMS)
    rules += expand(f"{block}.norm2", f"{fblock}/norm2", _NORM_PARAMS)
    rules += expand(f"{block}.mlp.fc1", f"{fblock}/mlp/fc1", _DENSE_PARAMS)
    rules += expand(f"{block}.mlp.fc2", f"{fblock}/mlp/fc2", _DENSE_PARAMS)
    # The first name is the one export writes; the others are accepted aliases.
    for norm in final_norm_names:
        rules += expand(f"{src}.{norm}", f"{dst}/norm", _NORM_PARAMS)
    return rules


def deconv_trunk_rules(src: str, dst: str, num_deconv: int) -> list[Rule]:
    """mmpose ``deconv_layers`` (Sequential of deconv, BN, ReLU triples) -> DeconvTrunk."""
    rules = []
    for j in range(num_deconv):
        rules.append(Rule(f"{src}.{3 * j}.weight", f"{dst}/deconvs/{j}/kernel", DECONV))
        rules += expand(f"{src}.{3 * j + 1}", f"{dst}/norms/{j}", _BN_PARAMS)
    return rules


def sonichu_rules(cfg: ModelConfig) -> list[Rule]:
    rules = vit_backbone_rules("backbone", "backbone", ("norm", "last_norm"))
    if cfg.head_sharing == "shared_trunk":
        rules += deconv_trunk_rules("head_trunk.deconv_layers", "trunk", cfg.num_deconv)
    elif cfg.head_kind == "classic":
        rules += deconv_trunk_rules("heads.{task}.deconv_layers", "heads/{task}/trunk", cfg.num_deconv)
    rules += expand("heads.{task}.final_layer", "heads/{task}/final", _CONV_PARAMS)
    return rules


def _is_sonichu(names: set[str]) -> bool:
    return any(n.startswith("backbone.blocks.") for n in names) and any(
        n.startswith("heads.") and ".final_layer." in n for n in names
    )


SONICHU = Layout(
    name="sonichu",
    description="Sonichu PyTorch: I-JEPA encoder names under backbone.*, mmpose heads under heads.{task}.*",
    rules=sonichu_rules,
    ignores=(BN_COUNTER,),
    detect=_is_sonichu,
)

FLAX = Layout(
    name="flax",
    description="this project's own checkpoints: tensors named by their Flax state path",
    rules=lambda cfg: [Rule("{path}", "{path}", IDENTITY)],
    ignores=(),
    detect=lambda names: all("/" in n for n in names),
)

LAYOUTS: dict[str, Layout] = {FLAX.name: FLAX, SONICHU.name: SONICHU}


def detect_layout(names, requested: str | None = None) -> Layout:
    """The layout named by ``requested``, else the first whose detector accepts the names."""
    if requested is not None:
        if requested not in LAYOUTS:
            raise InputError(f"unknown layout {requested!r}; known layouts: {', '.join(LAYOUTS)}")
        return LAYOUTS[requested]
    names = list(names)
    prefix = strip_prefix(names)
    stripped = {n[len(prefix) :] for n in names}
    for layout in LAYOUTS.values():
        if layout.detect(stripped):
            return layout
    sample = ", ".join(sorted(stripped)[:5])
    raise InputError(
        f"cannot tell the checkpoint layout from its tensor names (e.g. {sample}); "
        f"pass --layout with one of: {', '.join(LAYOUTS)}"
    )
