"""What a vision backbone gives: its kind, its hidden states, and which of its tokens are patches.

Hidden-state indices follow the transformers convention: HS[0] is the embedding output and HS[k] the
output of block k (a transformer layer for ViTs, a stage for CNNs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Pixel normalisation (mean, std) of the backbones' own image processors.
_OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Every supported backbone, by model type: its kind, whether token 0 is a CLS token (DeiT adds a distillation
# token, DINOv2 with registers its register tokens after it), and the normalisation its image processor uses.
BACKBONES: dict[str, tuple[str, bool, tuple]] = {
    "clip_vision_model": ("vit", True, _OPENAI_CLIP),
    "clip": ("vit", True, _OPENAI_CLIP),
    "siglip_vision_model": ("vit", False, _HALF),
    "siglip": ("vit", False, _HALF),
    "dinov2": ("vit", True, _IMAGENET),
    "dinov2_with_registers": ("vit", True, _IMAGENET),
    "vit": ("vit", True, _HALF),
    "deit": ("vit", True, _IMAGENET),
    "convnext": ("cnn", False, _IMAGENET),
    "convnextv2": ("cnn", False, _IMAGENET),
}
# Dual encoders: the vision part lives in `vision_config`.
DUAL_ENCODERS = {"clip", "siglip"}

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
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

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
    if getattr(config, "model_type", None) in DUAL_ENCODERS and hasattr(config, "vision_config"):
        return config.vision_config
    return config


def backbone(config) -> Backbone:
    """Describe a vision backbone config; raise a clear error for anything that is not one."""
    model_type = getattr(config, "model_type", "")
    if model_type not in BACKBONES:
        raise ValueError(
            f"vision_config of model_type {model_type!r} is not a supported vision backbone; supported: "
            f"{sorted(BACKBONES)}."
        )
    kind, has_cls, (mean, std) = BACKBONES[model_type]
    if kind == "vit":
        n = config.num_hidden_layers
        # CLS, then DeiT's distillation token or DINOv2's register tokens
        prefix = 1 + (model_type == "deit") + getattr(config, "num_register_tokens", 0) if has_cls else 0
        widths, strides = (config.hidden_size,) * (n + 1), (config.patch_size,) * (n + 1)
    else:
        n, prefix = config.num_stages, 0
        widths = (config.hidden_sizes[0], *config.hidden_sizes)
        # The stem patchifies by patch_size; every stage after the first halves the grid.
        strides = (config.patch_size, *(config.patch_size * 2**i for i in range(n)))
    return Backbone(model_type, kind, n, prefix, config.image_size, widths, strides, mean, std)


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


# Pooling heads after the last block, which no feature reads.
_HEADS = ("post_layernorm", "head", "layernorm", "pooler")


def trim(tower: nn.Module, keep_blocks: int) -> None:
    """Drop what the model never reads: blocks after the last needed hidden state and pooling heads.

    Unused parameters cost compute and memory and, when trainable, break DDP; LLaVA-OneVision drops
    SigLIP's last layer and head the same way.
    """
    del tower.get_submodule(block_list(tower))[keep_blocks:]
    for name in _HEADS:
        if isinstance(getattr(tower, name, None), nn.Module):
            setattr(tower, name, nn.Identity())
    embeddings = getattr(tower, "embeddings", None)
    if isinstance(getattr(embeddings, "mask_token", None), nn.Parameter):  # masked-image-modelling only
        embeddings.mask_token = None


def trimmed_away(key: str, tower: nn.Module) -> bool:
    """Whether a state-dict key (relative to a trimmed tower) names a part `trim` dropped from it: a block past
    the kept ones, a pooling head, the mask token."""
    blocks = block_list(tower)
    if key.startswith(f"{blocks}."):
        index = key[len(blocks) + 1 :].split(".", 1)[0]
        return index.isdigit() and int(index) >= len(tower.get_submodule(blocks))
    return key.split(".", 1)[0] in _HEADS or key == "embeddings.mask_token"
