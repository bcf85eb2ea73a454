"""What a vision backbone gives: its kind, its hidden states, and which of its tokens are patches.

Hidden-state indices follow the transformers convention: HS[0] is the embedding output and HS[k] the
output of block k (a transformer layer for ViTs, a stage for CNNs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Backbones whose token 0 is a CLS token (plus, for DINOv2 with registers, register tokens after it).
_CLS_BACKBONES = {"clip_vision_model", "clip", "dinov2", "dinov2_with_registers", "vit", "deit"}
_VIT_BACKBONES = _CLS_BACKBONES | {"siglip_vision_model", "siglip"}
_CNN_BACKBONES = {"convnext", "convnextv2"}
# Dual encoders: the vision part lives in `vision_config`.
_DUAL_ENCODERS = {"clip", "siglip"}

SELECT_STRATEGIES = ("default", "full", "drop_first")


@dataclass(frozen=True)
class Backbone:
    """Static facts about a vision backbone, read from its config alone."""

    model_type: str
    kind: str  # "vit" or "cnn"
    num_blocks: int  # HS has num_blocks + 1 entries
    num_prefix_tokens: int  # tokens before the patches (CLS, registers); 0 for SigLIP and CNNs
    image_size: int
    widths: tuple[int, ...]  # channel width of HS[0..num_blocks]
    strides: tuple[int, ...]  # pixels per token side of HS[0..num_blocks]

    def grid(self, layer: int, image_size: int | None = None) -> tuple[int, int]:
        """Patch grid (rows, cols) of HS[layer] for a square input of `image_size` pixels."""
        side = (image_size or self.image_size) // self.strides[layer]
        return side, side

    def absolute(self, layer: int) -> int:
        n = self.num_blocks + 1
        if not -n <= layer < n:
            raise ValueError(
                f"vision feature layer {layer} is out of range for a {self.model_type} backbone with "
                f"{self.num_blocks} blocks (valid: {-n} … {n - 1}; HS[0] is the embedding output)."
            )
        return layer % n


def vision_part(config):
    """The vision sub-config of a dual encoder (CLIP, SigLIP); any other config unchanged."""
    if getattr(config, "model_type", None) in _DUAL_ENCODERS and hasattr(config, "vision_config"):
        return config.vision_config
    return config


def backbone(config) -> Backbone:
    """Describe a vision backbone config; raise a clear error for anything that is not one."""
    model_type = getattr(config, "model_type", "")
    if model_type in _VIT_BACKBONES:
        n = config.num_hidden_layers
        prefix = 0
        if model_type in _CLS_BACKBONES:
            # CLS, then DeiT's distillation token or DINOv2's register tokens
            prefix = 1 + (model_type == "deit") + getattr(config, "num_register_tokens", 0)
        return Backbone(
            model_type,
            "vit",
            n,
            prefix,
            config.image_size,
            (config.hidden_size,) * (n + 1),
            (config.patch_size,) * (n + 1),
        )
    if model_type in _CNN_BACKBONES:
        n = config.num_stages
        widths = (config.hidden_sizes[0], *config.hidden_sizes)
        # The stem patchifies by patch_size; every stage after the first halves the grid.
        strides = (config.patch_size, *(config.patch_size * 2**i for i in range(n)))
        return Backbone(model_type, "cnn", n, 0, config.image_size, widths, strides)
    supported = sorted(_VIT_BACKBONES | _CNN_BACKBONES)
    raise ValueError(
        f"vision_config of model_type {model_type!r} is not a supported vision backbone; supported: {supported}."
    )


def patch_tokens(hidden: torch.Tensor, bb: Backbone, strategy: str) -> torch.Tensor:
    """Turn one hidden state into tokens (B, N, C) according to the selection strategy.

    `default` drops only the non-patch prefix tokens a backbone has (none for SigLIP); `full` keeps
    everything; `drop_first` always drops token 0 (for checkpoints trained that way). CNN grids
    (B, C, H, W) become H·W tokens in row-major order.
    """
    if hidden.dim() == 4:
        return hidden.flatten(2).transpose(1, 2)
    if strategy == "default":
        return hidden[:, bb.num_prefix_tokens :]
    if strategy == "drop_first":
        return hidden[:, 1:]
    return hidden


def is_spatial(bb: Backbone, strategy: str) -> bool:
    """Whether the selected tokens form the patch grid (so spatial connectors and AnyRes apply)."""
    if bb.kind == "cnn":
        return True
    kept_prefix = {"default": 0, "full": bb.num_prefix_tokens, "drop_first": bb.num_prefix_tokens - 1}[
        strategy
    ]
    return kept_prefix == 0


# Where backbones keep their block list: under the encoder (CLIP, SigLIP, DINOv2, ViT: layers / layer; ConvNeXt:
# stages) or, for some, at the top level.
_BLOCK_LISTS = ("encoder.layers", "encoder.layer", "encoder.stages", "layers", "layer", "stages")


def block_list(tower: nn.Module) -> str:
    """Dotted name of a vision tower's list of blocks (the ones HS[1..] are the outputs of)."""
    for name in _BLOCK_LISTS:
        try:
            if isinstance(tower.get_submodule(name), nn.ModuleList):
                return name
        except AttributeError:
            continue
    raise ValueError(f"cannot find the block list of the {type(tower).__name__} vision tower.")


def trim(tower: nn.Module, keep_blocks: int) -> None:
    """Drop what the model never reads: blocks after the last needed hidden state and pooling heads.

    Unused parameters cost compute and memory and, when trainable, break DDP; LLaVA-OneVision drops
    SigLIP's last layer and head the same way.
    """
    del tower.get_submodule(block_list(tower))[keep_blocks:]
    for name in ("post_layernorm", "head", "layernorm", "pooler"):
        if isinstance(getattr(tower, name, None), nn.Module):
            setattr(tower, name, nn.Identity())
    embeddings = getattr(tower, "embeddings", None)
    if isinstance(getattr(embeddings, "mask_token", None), nn.Parameter):  # masked-image-modelling only
        embeddings.mask_token = None
