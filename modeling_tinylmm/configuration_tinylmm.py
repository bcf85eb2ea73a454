"""TinyLMMConfig: a vision backbone config, a causal-LM config and how to connect them."""

from __future__ import annotations

import re

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .connectors import Connector, resolve_connector
from .vision_features import SELECT_STRATEGIES, Backbone, backbone, is_spatial, vision_part

_ASPECT_RATIOS = re.compile(r"pad|resize|anyres|anyres_max_\d+")


@strict
class TinyLMMConfig(PreTrainedConfig):
    r"""
    Configuration of a TinyLMM model: `vision_config` (any supported vision backbone: CLIP, SigLIP,
    DINOv2, ConvNeXt …), `text_config` (any causal LM) and the connector between them. Field names follow
    `LlavaConfig` where the concept is the same.

    Args:
        vision_config (`dict` or `PreTrainedConfig`): the vision backbone. A dual encoder config (CLIP,
            SigLIP) is accepted and its vision part taken.
        text_config (`dict` or `PreTrainedConfig`): the causal LM.
        image_token_id (`int`, *optional*): placeholder token that image features replace; defaults to the
            last id of the vocabulary.
        video_token_id (`int`, *optional*): placeholder for video features; defaults to `image_token_id`.
        vision_feature_layer (`int` or `list[int]`, *optional*): hidden state(s) of the vision tower used as
            features (HS[0] is the embedding output); default −2 for ViTs, −1 for CNNs.
        vision_feature_select_strategy (`str`): `default` drops the non-patch tokens a backbone has (CLS,
            registers; none for SigLIP), `full` keeps all tokens, `drop_first` always drops token 0.
        projector_hidden_act (`str`): activation of the MLP connectors.
        connector_type (`str`): a registered connector name (`mlp2x_gelu`, `resampler`, `dense_sti` …).
        connector_config (`dict`, *optional*): the connector's options (`num_queries`, `dense_layers` …).
        image_aspect_ratio (`str`): `pad`, `resize`, `anyres` or `anyres_max_N`.
        image_grid_pinpoints (`list`, *optional*): candidate (height, width) resolutions for AnyRes.
        video_max_frames (`int`): most frames sampled from a video.
        video_pool_stride (`int`): bilinear pooling of each frame's token grid.
    """

    model_type = "tinylmm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_feature_layer: int | list[int] | None = None
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    connector_type: str = "mlp2x_gelu"
    connector_config: dict | None = None
    image_aspect_ratio: str = "pad"
    image_grid_pinpoints: list | None = None
    video_max_frames: int = 32
    video_pool_stride: int = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.vision_config = vision_part(self.vision_config)
        bb = backbone(self.vision_config)  # raises for a config that is not a vision backbone
        if self.text_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"text_config of model_type {self.text_config.model_type!r} is not a causal language model."
            )
        if self.vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        if self.vision_feature_layer is None:
            self.vision_feature_layer = -1 if bb.kind == "cnn" else -2
        layers = (
            self.vision_feature_layer
            if isinstance(self.vision_feature_layer, list)
            else [self.vision_feature_layer]
        )
        for layer in layers:
            bb.absolute(layer)
        if self.image_token_id is None:
            self.image_token_id = self.text_config.vocab_size - 1
        if not _ASPECT_RATIOS.fullmatch(self.image_aspect_ratio):
            raise ValueError(
                f"image_aspect_ratio must be pad, resize, anyres or anyres_max_N, got {self.image_aspect_ratio!r}."
            )
        self.connector_class.check(self)
        if self.image_aspect_ratio.startswith("anyres") and self.connector_grid is None:
            raise ValueError(
                f"image_aspect_ratio={self.image_aspect_ratio!r} arranges crop features spatially, but connector "
                f"{self.connector_type!r} does not keep a patch grid; use pad or resize, or a spatial connector."
            )
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    # Geometry derived from the sub-configs: computed, never stored, so it cannot go stale.

    @property
    def vision_backbone(self) -> Backbone:
        return backbone(self.vision_config)

    @property
    def feature_layers(self) -> list[int]:
        layers = (
            self.vision_feature_layer
            if isinstance(self.vision_feature_layer, list)
            else [self.vision_feature_layer]
        )
        return [self.vision_backbone.absolute(i) for i in layers]

    @property
    def feature_width(self) -> int:
        return sum(self.vision_backbone.widths[i] for i in self.feature_layers)

    @property
    def feature_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the selected features for one crop, or None when they are not a patch grid."""
        bb = self.vision_backbone
        if not is_spatial(bb, self.vision_feature_select_strategy):
            return None
        return bb.grid(self.feature_layers[0])

    @property
    def num_feature_tokens(self) -> int:
        bb = self.vision_backbone
        h, w = bb.grid(self.feature_layers[0])
        kept_prefix = {
            "default": 0,
            "full": bb.num_prefix_tokens,
            "drop_first": max(bb.num_prefix_tokens - 1, 0),
        }
        extra = 0 if bb.kind == "cnn" else kept_prefix[self.vision_feature_select_strategy]
        if self.vision_feature_select_strategy == "drop_first" and bb.num_prefix_tokens == 0:
            extra = -1  # e.g. SigLIP: 729 patches, 728 kept
        return h * w + extra

    @property
    def connector_class(self) -> type[Connector]:
        return resolve_connector(self.connector_type)[0]

    @property
    def connector_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the connector output for one crop, or None when it is not a grid."""
        grid = self.feature_grid
        if grid is None or not self.connector_class.spatial:
            return None
        return self.connector_class.output_grid(self, grid)

    @property
    def image_seq_length(self) -> int:
        """Placeholder tokens for one crop (a pad / resize image)."""
        return self.connector_class.num_tokens(self, self.num_feature_tokens, self.feature_grid)

    @property
    def vision_layers(self) -> list[int]:
        """Every vision hidden state the model reads."""
        return sorted(set(self.feature_layers) | set(self.connector_class.vision_layers(self)))


__all__ = ["TinyLMMConfig"]
