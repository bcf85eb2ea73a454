"""TinyLMMConfig: a vision backbone config, a causal-LM config and how to connect them."""

from __future__ import annotations

import re

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from .connectors import Connector, is_plugin, resolve_connector
from .vision_features import SELECT_STRATEGIES, Backbone, backbone, is_spatial, vision_part

_ASPECT_RATIOS = re.compile(r"pad|resize|crop|anyres|anyres_max_\d+")


def _check_text_model(text_config) -> None:
    """Refuse a text model that is not a decoder-only causal LM. Encoder families (BERT, RoBERTa …) sit in
    transformers' causal-LM mapping through heads that run causally only with `is_decoder=True`; left at the
    default they attend in both directions, so every position would see the tokens it is trained to predict."""
    model_type = text_config.model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"text_config of model_type {model_type!r} is not a causal language model.")
    if getattr(text_config, "is_encoder_decoder", False):
        raise ValueError(
            f"text_config of model_type {model_type!r} is an encoder-decoder model; tinylmm needs a decoder-only "
            "causal LM (llama, qwen2, phi, gpt2 …)."
        )
    base = MODEL_MAPPING_NAMES.get(model_type)
    # An encoder: it has a masked-LM head, or its base model is an encoder (bert-generation).
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or (
        isinstance(base, str) and base.endswith("Encoder")
    )
    if encoder and not getattr(text_config, "is_decoder", False):
        fix = (
            " A checkpoint of it trained as a causal decoder can be used with is_decoder=True in text_config."
            if hasattr(text_config, "is_decoder")
            else ""
        )
        raise ValueError(
            f"text_config of model_type {model_type!r} is an encoder: it attends to the tokens after each position "
            f"as well as before, so it is not a causal language model. Use a decoder-only LLM (llama, qwen2, phi, "
            f"gpt2 …).{fix}"
        )


def _check_token_id(name: str, value, vocab_size: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (a token id of the text model); got {value!r}.")
    if vocab_size is not None and not 0 <= value < vocab_size:
        raise ValueError(
            f"{name} {value} is outside the text model's vocabulary (vocab_size {vocab_size}: ids 0 … "
            f"{vocab_size - 1}). Add the token to the tokenizer and grow the embeddings to hold it "
            "(`from_components(..., image_token_id=...)` and `tinylmm build` do both)."
        )


def _position_limit(text_config) -> int | None:
    """Most positions the LLM takes: its `max_position_embeddings` (`n_positions` for GPT-2), times the factor of
    a RoPE scaling that extends a window given at its original size (linear, YaRN); None for a text model with no
    such limit and for dynamic NTK scaling, which stretches to any length."""
    limit = getattr(text_config, "max_position_embeddings", None)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return None
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    # Models with several attention types keep one RoPE setting per type.
    settings = list(rope.values()) if rope and all(isinstance(v, dict) for v in rope.values()) else [rope]
    longest = limit
    for params in settings:
        kind = params.get("rope_type", params.get("type", "default"))
        if kind == "dynamic":
            return None
        original = params.get("original_max_position_embeddings")
        if kind in ("linear", "yarn") and original in (None, limit):
            # A window already extended in the config (DeepSeek: 163840 over 4096) is left as it is.
            longest = max(longest, int(limit * params.get("factor", 1.0)))
    return longest


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
        connector_plugin (`str`, *optional*): the module a plugin connector comes from (recorded, not set).
        image_aspect_ratio (`str`): `pad`, `resize`, `crop` (shorter side resized, centre crop: CLIP's image
            processor, as transformers' LLaVA-1.5 processors do), `anyres` or `anyres_max_N`.
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
    connector_plugin: str | None = None
    image_aspect_ratio: str = "pad"
    image_grid_pinpoints: list | None = None
    video_max_frames: int = 32
    video_pool_stride: int = 2
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # Another model's config.json (llava, llava_onevision, tinyllava …) would fail later on a field of its
        # own; say what it is and how to bring it in.
        model_type = config_dict.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(
                f"this is a {model_type!r} checkpoint, not a tinylmm one; convert it first: "
                f"`tinylmm convert SRC DST` (or trainers.convert.convert(src, dst)), then load DST."
            )
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.vision_config = vision_part(self.vision_config)
        bb = backbone(self.vision_config)  # raises for a config that is not a vision backbone
        _check_text_model(self.text_config)
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
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(
                    f"vision_feature_layer must be an int or a list of ints (hidden-state indices, e.g. -2); got "
                    f"{self.vision_feature_layer!r}."
                )
            bb.absolute(layer)
        vocab_size = getattr(self.text_config, "vocab_size", None)
        if self.image_token_id is None:
            self.image_token_id = vocab_size - 1
        _check_token_id("image_token_id", self.image_token_id, vocab_size)
        if self.video_token_id is not None:
            _check_token_id("video_token_id", self.video_token_id, vocab_size)
        if not _ASPECT_RATIOS.fullmatch(self.image_aspect_ratio):
            raise ValueError(
                f"image_aspect_ratio must be pad, resize, crop, anyres or anyres_max_N, got "
                f"{self.image_aspect_ratio!r}."
            )
        try:
            connector = self.connector_class
        except ValueError as err:
            if self.connector_plugin is None:
                raise
            raise ValueError(
                f"connector {self.connector_type!r} comes from the plugin module {self.connector_plugin!r}, which "
                "is not installed here. Install the package that provides it, or load this checkpoint with "
                "trust_remote_code=True: the folder carries the connector's code."
            ) from err
        if is_plugin(connector):
            self.connector_plugin = connector.__module__
        connector.check(self)
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

    @property
    def max_positions(self) -> int | None:
        """Most positions the LLM takes, or None when it has no such limit."""
        return _position_limit(self.text_config)


__all__ = ["TinyLMMConfig"]
