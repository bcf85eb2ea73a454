"""TinyLMM: vision tower -> connector -> causal LLM, as one PreTrainedModel.

Image placeholders arrive already expanded in `input_ids` (the processor writes exactly as many as the
model makes features); the model fills them in place, so hidden states stay aligned token-for-token
with `labels`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from .configuration_tinylmm import TinyLMMConfig
from .connectors import Connector, resolve_connector
from .vision_features import block_list, patch_tokens, trim, vision_part
from .visual_layout import arrange

# The name transformers gives the KV cache, as an output field and as the LLM's keyword: `cache` from 5.24 on,
# `past_key_values` before. Everything here passes it on under that name and declares no field of its own.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class TinyLMMModelOutputWithPast(BaseModelOutputWithPast):
    image_hidden_states: torch.Tensor | None = None


@dataclass
class TinyLMMCausalLMOutputWithPast(CausalLMOutputWithPast):
    image_hidden_states: torch.Tensor | None = None


def _take_cache(kwargs: dict) -> Cache | None:
    """The cache, under whichever name the caller (generate, TRL, a user) used."""
    caches = [kwargs.pop(name) for name in ("cache", "past_key_values") if name in kwargs]
    caches = [c for c in caches if c is not None]
    if len(caches) > 1:
        raise ValueError("pass the KV cache once, as `cache` or `past_key_values`, not both.")
    return caches[0] if caches else None


def _positions_to_keep(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """Hidden states of the positions whose logits are wanted: the last N (0 = all), 1-D indices, per-row
    (batch, positions) indices, or a boolean (batch, length) mask (flattened to (kept, D))."""
    if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.ndim == 2:
        if logits_to_keep.dtype == torch.bool:
            return hidden[logits_to_keep]
        return torch.take_along_dim(hidden, logits_to_keep[..., None], dim=1)
    if isinstance(logits_to_keep, int):
        logits_to_keep = slice(-logits_to_keep, None)
    return hidden[:, logits_to_keep]


class TinyLMMPreTrainedModel(PreTrainedModel):
    config_class = TinyLMMConfig
    config: TinyLMMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_FIELD]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # the placeholder count check synchronises

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TinyLMMModel) and module.image_newline is not None:
            init.normal_(module.image_newline, std=module.config.text_config.hidden_size**-0.5)
        elif isinstance(module, Connector):
            module.init_weights()


class TinyLMMModel(TinyLMMPreTrainedModel):
    """Vision tower, connector and LLM body (no LM head)."""

    def __init__(self, config: TinyLMMConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        trim(self.vision_tower, keep_blocks=max(config.vision_layers))
        connector_cls, connector_args = resolve_connector(config.connector_type)
        self.connector = connector_cls(config, **connector_args)
        self.language_model = AutoModel.from_config(config.text_config)
        # Learned separator after each row of an arranged grid (LLaVA-OneVision); only AnyRes layouts use it.
        self.image_newline = (
            nn.Parameter(torch.zeros(config.text_config.hidden_size))
            if config.image_aspect_ratio.startswith("anyres")
            else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(
        self, pixel_values: torch.Tensor, image_layout: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Features of every visual input, in order: a list of (tokens, D) tensors.

        `pixel_values` holds every crop / frame of the batch, (num_crops, 3, H, W). `image_layout`, one
        record per visual input written by the processor, says how its crops are arranged; without it
        each crop is one image.
        """
        config = self.config
        bb = config.vision_backbone
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        # A tower trimmed to no blocks records no hidden states: its output is HS[0].
        states = out.hidden_states or (out.last_hidden_state,)
        strategy = config.vision_feature_select_strategy
        hidden = {i: patch_tokens(states[i], bb, strategy) for i in config.vision_layers}
        features = torch.cat([hidden[i] for i in config.feature_layers], dim=-1)
        grid = None
        if config.feature_grid is not None:  # the grid of this input size (AnyRes crops share one size)
            side = pixel_values.shape[-1]
            grid = bb.grid(config.feature_layers[0], image_size=side)
        crops = self.connector(features, hidden, grid)
        out_grid = (
            config.connector_class.output_grid(config, grid) if config.connector_grid is not None else None
        )
        return arrange(crops, image_layout, out_grid, self.image_newline, config)

    def _placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids == self.config.image_token_id
        if self.config.video_token_id is not None:
            mask |= input_ids == self.config.video_token_id
        return mask

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_layout: torch.Tensor | None = None,
        **kwargs,
    ) -> TinyLMMModelOutputWithPast:
        """The cache comes in `kwargs` as `cache` (or `past_key_values`) and goes to the LLM under the name the
        installed transformers uses."""
        cache = _take_cache(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError(
                    "pixel_values need input_ids: the image placeholder tokens say where features go."
                )
            mask = self._placeholder_mask(input_ids)
            image_features = torch.cat(self.get_image_features(pixel_values, image_layout), dim=0)
            n_tokens, n_features = int(mask.sum()), image_features.shape[0]
            if n_tokens != n_features:
                raise ValueError(
                    f"image tokens and image features do not match: input_ids hold {n_tokens} image tokens "
                    f"(id {self.config.image_token_id}) but the images give {n_features} features. Build inputs "
                    "with TinyLMMProcessor, which expands each <image> to the right count."
                )
            inputs_embeds = inputs_embeds.masked_scatter(
                mask.unsqueeze(-1).to(inputs_embeds.device), image_features.to(inputs_embeds)
            )
        elif input_ids is not None and (cache is None or cache.get_seq_length() == 0):
            n_tokens = int(self._placeholder_mask(input_ids).sum())
            if n_tokens:
                raise ValueError(f"input_ids hold {n_tokens} image tokens but no pixel_values were given.")

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_FIELD: cache},
            **kwargs,
        )
        return TinyLMMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )


class TinyLMMForConditionalGeneration(TinyLMMPreTrainedModel, GenerationMixin):
    """TinyLMM with a language-modelling head: the class `AutoModelForImageTextToText` loads."""

    # The model's parts as dotted prefixes from its root: recipes, LoRA and quantisation name parts by these
    # keys and never spell the module names themselves. `vision_blocks` adds the encoder's block list.
    parts: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision_tower": ("model.vision_tower",),
        "connector": ("model.connector", "model.image_newline"),
        "language_model": ("model.language_model", "lm_head"),
        "lm_head": ("lm_head",),
    }

    @property
    def vision_blocks(self) -> str:
        """Dotted name of the vision encoder's block list (`model.vision_tower.encoder.layers` for a ViT)."""
        return f"model.vision_tower.{block_list(self.model.vision_tower)}"

    def __init__(self, config: TinyLMMConfig):
        super().__init__(config)
        self.model = TinyLMMModel(config)
        text = config.text_config
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=getattr(text, "lm_head_bias", False))
        # The LLM body names its embedding differently per family (embed_tokens, wte …).
        embed = self.model.language_model.get_input_embeddings()
        name = next(n for n, m in self.model.language_model.named_modules() if m is embed)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def connector(self) -> nn.Module:
        return self.model.connector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(
        self, pixel_values: torch.Tensor, image_layout: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        return self.model.get_image_features(pixel_values, image_layout)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_layout: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> TinyLMMCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            image_layout=image_layout,
            **kwargs,
        )
        logits = self.lm_head(_positions_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return TinyLMMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )

    @classmethod
    def from_components(
        cls,
        vision_model: str | os.PathLike,
        text_model: str | os.PathLike,
        connector_type: str = "mlp2x_gelu",
        image_token_id: int | None = None,
        **config_kwargs,
    ) -> TinyLMMForConditionalGeneration:
        """Compose a pretrained vision backbone and a pretrained causal LM (Hub ids or local folders) with a
        freshly initialised connector.

        A dual-encoder checkpoint (CLIP, SigLIP with a text tower) gives its vision part. Without
        `image_token_id`, one new token is appended to the vocabulary for the image placeholder.
        Blocks after the last vision layer the model reads are dropped.
        """
        vision = AutoModel.from_pretrained(vision_model)
        vision_config = vision_part(vision.config)
        if vision_config is not vision.config:
            vision = vision.vision_model
        text = AutoModelForCausalLM.from_pretrained(text_model)
        grow = image_token_id is None
        if grow:
            image_token_id = text.config.vocab_size
        config = TinyLMMConfig(
            vision_config=vision_config.to_dict(),
            text_config=text.config.to_dict(),
            connector_type=connector_type,
            image_token_id=image_token_id,
            **config_kwargs,
        )
        model = cls(config)
        missing, _ = model.model.vision_tower.load_state_dict(vision.state_dict(), strict=False)
        model.model.language_model.load_state_dict(text.base_model.state_dict())
        model.lm_head.load_state_dict(text.get_output_embeddings().state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"vision weights missing from {vision_model}: {missing}")
        if grow:
            model.resize_token_embeddings(text.config.vocab_size + 1)
        model.tie_weights()
        return model


TinyLMMConfig.register_for_auto_class()
TinyLMMModel.register_for_auto_class("AutoModel")
TinyLMMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["TinyLMMPreTrainedModel", "TinyLMMModel", "TinyLMMForConditionalGeneration"]
