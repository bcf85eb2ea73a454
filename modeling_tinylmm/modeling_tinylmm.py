"""TinyLMM: vision tower -> connector -> causal LLM, as one PreTrainedModel.

Image placeholders arrive already expanded in `input_ids` (the processor writes exactly as many as the
model makes features); the model fills them in place, so hidden states stay aligned token-for-token
with `labels`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.utils.generic import can_return_tuple

from .configuration_tinylmm import TinyLMMConfig
from .connectors import Connector, is_plugin, plugin_source, resolve_connector
from .vision_features import DUAL_ENCODERS, block_list, patch_tokens, trim, trimmed_away, vision_part
from .visual_layout import arrange

# The name transformers gives the KV cache, as an output field and as the LLM's keyword: `cache` from 5.24 on,
# `past_key_values` before. Everything here passes it on under that name and declares no field of its own.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

logger = logging.getLogger(__name__)

# Normalised pixels stay within a few units of 0 (ImageNet statistics give -2.1 … 2.6); values past this are raw
# 0–255 pixels that skipped the processor.
_PIXEL_LIMIT = 20.0
_USE_THE_PROCESSOR = (
    "Build pixel_values with the processor (TinyLMMProcessor or TinyLMMImageProcessor, return_tensors='pt'), "
    "which rescales and normalises them."
)


def _check_pixel_layout(pixel_values, num_channels: int) -> None:
    """Type, dtype and shape of pixel_values: facts of the Python object, free to check."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch tensor; got {type(pixel_values).__name__}. {_USE_THE_PROCESSOR}"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values are {pixel_values.dtype}, not normalised float pixels: raw image values (0–255) would be "
            f"read as if normalised. {_USE_THE_PROCESSOR}"
        )
    shape = tuple(pixel_values.shape)
    if pixel_values.ndim == 3:
        raise ValueError(
            f"pixel_values have shape {shape}: one image without a batch dimension. Add a batch dimension, "
            f"(1, {num_channels}, H, W): pixel_values.unsqueeze(0)."
        )
    if pixel_values.ndim != 4 or shape[1] != num_channels:
        raise ValueError(
            f"pixel_values have shape {shape}; the model takes (num_crops, {num_channels}, H, W): every crop of the "
            f"batch stacked, channels first, as the processor returns them."
        )


def _corrupt_weights(source, err: Exception) -> OSError:
    """The error for a weights file safetensors cannot read, naming the file (transformers' message names none)."""
    from safetensors import safe_open

    broken = []
    if os.path.isdir(source):
        for name in sorted(os.listdir(source)):
            if name.endswith(".safetensors"):
                try:
                    with safe_open(os.path.join(source, name), framework="pt"):
                        pass
                except Exception as file_err:  # noqa: BLE001 - safetensors' own error type, named below
                    broken.append(f"{os.path.join(source, name)} is truncated or corrupt ({file_err})")
    if broken:
        return OSError(f"weights file {'; '.join(broken)}: save or download the checkpoint again.")
    return OSError(f"a weights file of {source} is truncated or corrupt ({err}): save or download it again.")


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


def is_packed(position_ids: torch.Tensor | None) -> bool:
    """Whether some row of `position_ids` holds several sequences (its positions restart somewhere)."""
    if position_ids is None or position_ids.shape[-1] < 2:
        return False
    return bool((position_ids[..., 1:] != position_ids[..., :-1] + 1).any())


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

    def post_init(self):
        """transformers' post_init, after which `_no_split_modules` keeps only the classes this model holds: a
        vision tower's list also names classes of the model it comes from that the tower lacks (CLIP's and
        SigLIP's text embeddings) or that `trim` drops (SigLIP's pooling head), and accelerate's FSDP
        auto-wrap (TRANSFORMER_BASED_WRAP, which reads this list) stops on a class it cannot find."""
        super().post_init()
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = {name for name in self._no_split_modules if name in present}

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """transformers' save, plus the code of a plugin connector (see connectors.plugin_source), so that the
        folder loads with `trust_remote_code=True` where the plugin is not installed."""
        super().save_pretrained(save_directory, *args, **kwargs)
        connector = next(m for m in self.modules() if isinstance(m, Connector))
        if kwargs.get("is_main_process", True) and is_plugin(type(connector)):
            source = plugin_source(type(connector))
            origin = type(connector).__module__
            with open(os.path.join(save_directory, "connector_plugins.py"), "w", encoding="utf-8") as f:
                f.write(f"# The code of connector {connector.name!r}, from the plugin module {origin!r}.\n")
                f.write(f"{source.rstrip()}\n\nPLUGIN_CONNECTORS = ({connector.name!r},)\n")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, TinyLMMModel) and module.image_newline is not None:
            init.normal_(module.image_newline, std=module.config.text_config.hidden_size**-0.5)
        elif isinstance(module, Connector):
            module.init_weights()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' loading, made strict where a mismatch would pass with a warning: every weight of the vision
        tower and the connector must come from the checkpoint and every checkpoint weight of theirs must have a
        place (see `_check_loaded_keys`); a truncated or corrupt safetensors file is named."""
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            raise _corrupt_weights(pretrained_model_name_or_path, err) from err
        model._check_loaded_keys(info, pretrained_model_name_or_path)
        return (model, info) if wants_info else model

    def _check_loaded_keys(self, info: dict, source) -> None:
        """Raise when the checkpoint does not fit the vision tower or the connector (missing or unexpected weights),
        which a different connector type or depth, or another vision feature layer, causes.

        Left to transformers: the LLM's keys (its own classes list the leftovers to ignore) and the tied head.
        Legitimately unexpected: the vision blocks past the ones this config reads, and the pooling heads, which
        `trim` drops when the model is built (a checkpoint that kept more blocks, or a full tower); they are not
        loaded, and a warning counts them."""
        root = next(name for name, module in self.named_modules() if isinstance(module, TinyLMMModel))
        base = self.get_submodule(root)
        prefix = f"{root}." if root else ""
        tower = f"{prefix}vision_tower."
        watched = (tower, f"{prefix}connector.", f"{prefix}image_newline")

        def ours(key: str) -> bool:
            return key.startswith(watched[:2]) or key == watched[2]

        missing = sorted(k for k in info.get("missing_keys", ()) if ours(k))
        unexpected = sorted(k for k in info.get("unexpected_keys", ()) if ours(k))
        dropped = [
            k for k in unexpected if k.startswith(tower) and trimmed_away(k[len(tower) :], base.vision_tower)
        ]
        unexpected = [k for k in unexpected if k not in dropped]
        if missing or unexpected:

            def listing(keys: list[str]) -> str:
                return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

            found = []
            if missing:
                found.append(
                    f"{len(missing)} weight(s) of the model missing from the checkpoint: {listing(missing)}"
                )
            if unexpected:
                found.append(
                    f"{len(unexpected)} checkpoint weight(s) the model has no place for: {listing(unexpected)}"
                )
            config = self.config
            raise ValueError(
                f"the weights of {source} do not fit this model's vision tower and connector (connector_type "
                f"{config.connector_type!r}, vision_feature_layer {config.vision_feature_layer!r}): "
                f"{'; '.join(found)}. Load the checkpoint with the config it was saved with (its config.json); "
                "a new connector type starts from `from_components` or `tinylmm build`."
            )
        if dropped:
            logger.warning(
                "%s: %d vision tower weight(s) of blocks or heads this config does not read were not loaded "
                "(it keeps %d block(s); vision_feature_layer %r). If the connector was trained on a deeper layer, "
                "load the checkpoint with the config it was saved with.",
                source,
                len(dropped),
                len(base.vision_tower.get_submodule(block_list(base.vision_tower))),
                self.config.vision_feature_layer,
            )


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
        # Sharded training (FSDP, DeepSpeed ZeRO-3) gathers each vision block's weights on all processes at
        # once, so every process must run the tower in every step; the trainer turns this on there.
        self.vision_in_every_step = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_layout: torch.Tensor | None = None,
        return_dict: bool = False,
        **kwargs,
    ) -> list[torch.Tensor] | BaseModelOutputWithPooling:
        """Features of every visual input, in order: a list of (tokens, D) tensors (with `return_dict=True`,
        as the `pooler_output` of a model output, which is how vLLM's transformers backend asks).

        `pixel_values` holds every crop / frame of the batch, (num_crops, 3, H, W). `image_layout`, one
        record per visual input written by the processor, says how its crops are arranged; without it
        each crop is one image.
        """
        if return_dict:
            return BaseModelOutputWithPooling(
                pooler_output=self.get_image_features(pixel_values, image_layout)
            )
        config = self.config
        _check_pixel_layout(pixel_values, getattr(config.vision_config, "num_channels", 3))
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

    def _check_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> int:
        """The image placeholders in `input_ids`, counted after checking that every id lies in the vocabulary and
        that the pixels are finite and normalised. The count is needed anyway: one host sync serves all checks.
        The pixel checks are one min/max reduction, small beside the vision tower."""
        mask = self._placeholder_mask(input_ids)
        embed = self.get_input_embeddings()
        vocab = getattr(embed, "num_embeddings", None) or self.config.text_config.vocab_size
        stats = [mask.sum(), ((input_ids < 0) | (input_ids >= vocab)).sum()]
        if pixel_values is not None:
            _check_pixel_layout(pixel_values, getattr(self.config.vision_config, "num_channels", 3))
            if pixel_values.numel():
                low, high = torch.aminmax(pixel_values)
                peak = torch.maximum(high, -low)  # NaN if any value is NaN
                stats += [(~peak.isfinite()).to(mask.device), (peak > _PIXEL_LIMIT).to(mask.device)]
        n_tokens, bad_ids, *bad_pixels = torch.stack([s.long() for s in stats]).tolist()
        if bad_ids:
            outside = input_ids[(input_ids < 0) | (input_ids >= vocab)]
            raise ValueError(
                f"input_ids hold {bad_ids} id(s) outside the vocabulary (ids 0 … {vocab - 1}): smallest "
                f"{int(outside.min())}, largest {int(outside.max())}. Tokenise with this model's processor; its "
                f"image placeholder is id {self.config.image_token_id}."
            )
        if bad_pixels and bad_pixels[0]:
            nan, inf = int(pixel_values.isnan().sum()), int(pixel_values.isinf().sum())
            raise ValueError(
                f"pixel_values hold {nan} NaN and {inf} infinite value(s) (of {pixel_values.numel()}): the logits "
                "and the loss would be NaN. Check the images and the image processor's image_std (a zero std "
                "divides by zero)."
            )
        if bad_pixels and bad_pixels[1]:
            peak = float(pixel_values.abs().max())
            raise ValueError(
                f"pixel_values reach {peak:g}: normalised pixels stay within a few units of 0, so these look like "
                f"raw 0–255 values. {_USE_THE_PROCESSOR}"
            )
        return n_tokens

    def _check_positions(self, length: int, past: int, position_ids: torch.Tensor | None) -> None:
        """Refuse positions past the LLM's limit: a learned position table indexes out of range, RoPE runs beyond
        what it was trained on. Decided on the Python ints of shapes; `position_ids` are read (one host sync) only
        when the shapes alone pass the limit, as for packed rows whose positions restart at each sample."""
        limit = self.config.max_positions
        if limit is None or past + length <= limit:
            return
        last = past + length - 1
        if position_ids is not None:
            last = int(position_ids.max())
            if last < limit:
                return
        cached = f" after {past} cached" if past else ""
        raise ValueError(
            f"the input needs position {last}, but the text model ({self.config.text_config.model_type}) takes "
            f"positions 0 … {limit - 1} (max_position_embeddings {limit}); it has {length} token(s){cached}. "
            "Shorten it (truncate to max_length, fewer or smaller images) or generate fewer new tokens."
        )

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
        if pixel_values is not None and input_ids is None:
            raise ValueError(
                "pixel_values need input_ids: the image placeholder tokens say where features go."
            )
        past = int(cache.get_seq_length()) if cache is not None else 0
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        self._check_positions(length, past, position_ids)
        # User inputs arrive with images or at the start of a sequence; decoding steps feed the model's own tokens.
        n_tokens = 0
        if pixel_values is not None or (input_ids is not None and past == 0):
            n_tokens = self._check_inputs(input_ids, pixel_values)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None:
            mask = self._placeholder_mask(input_ids)
            image_features = torch.cat(self.get_image_features(pixel_values, image_layout), dim=0)
            n_features = image_features.shape[0]
            if n_tokens != n_features:
                raise ValueError(
                    f"image tokens and image features do not match: input_ids hold {n_tokens} image tokens "
                    f"(id {self.config.image_token_id}) but the images give {n_features} features. Build inputs "
                    "with TinyLMMProcessor, which expands each <image> to the right count."
                )
            inputs_embeds = inputs_embeds.masked_scatter(
                mask.unsqueeze(-1).to(inputs_embeds.device), image_features.to(inputs_embeds)
            )
        elif n_tokens:
            raise ValueError(f"input_ids hold {n_tokens} image tokens but no pixel_values were given.")
        elif self.vision_in_every_step and self.training:
            # A batch without images: the tower runs on one blank crop and adds exactly nothing.
            side = getattr(self.config.vision_config, "image_size", 224)
            channels = getattr(self.config.vision_config, "num_channels", 3)
            blank = inputs_embeds.new_zeros(1, channels, side, side)
            unused = torch.cat(self.get_image_features(blank), dim=0).sum()
            inputs_embeds = inputs_embeds + 0.0 * unused.to(inputs_embeds.dtype)

        if attention_mask is None and cache is None and is_packed(position_ids):
            # Packed rows: transformers derives the block-diagonal mask (or flash-attention's varlen boundaries)
            # from position_ids only when no cache exists, and the LLM creates one whenever use_cache is on.
            kwargs["use_cache"] = False
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
        # Phi (1, 1.5, 2) has a biased LM head, with no config field saying so; other families say it or have none.
        bias = getattr(text, "lm_head_bias", text.model_type == "phi")
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=bias)
        # The LLM body names its embedding differently per family (embed_tokens, wte …).
        embed = self.model.language_model.get_input_embeddings()
        name = next(n for n, m in self.model.language_model.named_modules() if m is embed)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        # save_pretrained writes this class's auto_map entry; vLLM's transformers backend instantiates the base
        # model through `auto_map.AutoModel`, so the folder names that too.
        config.auto_map = {
            **(getattr(config, "auto_map", None) or {}),
            "AutoModel": "modeling_tinylmm.TinyLMMModel",
        }
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
        self,
        pixel_values: torch.Tensor,
        image_layout: torch.Tensor | None = None,
        return_dict: bool = False,
        **kwargs,
    ) -> list[torch.Tensor] | BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, image_layout, return_dict=return_dict)

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
        vocab_size: int | None = None,
        **config_kwargs,
    ) -> TinyLMMForConditionalGeneration:
        """Compose a pretrained vision backbone and a pretrained causal LM (Hub ids or local folders) with a
        freshly initialised connector. For a model *and* its processor, ready to train, use
        `trainers.build.compose`, which also adds the image token to the LLM's tokenizer.

        A dual-encoder checkpoint (CLIP, SigLIP with a text tower) gives its vision part. Without
        `image_token_id`, one new token is appended to the vocabulary for the image placeholder. The embedding
        (and head) grow to hold `image_token_id` and at least `vocab_size` rows (a tokenizer's length).
        Blocks after the last vision layer the model reads are dropped.
        """
        for role, source in (("vision_model", vision_model), ("text_model", text_model)):
            found, _ = PreTrainedConfig.get_config_dict(source)
            if {"text_config", "vision_config"} <= set(found) and found.get(
                "model_type"
            ) not in DUAL_ENCODERS:
                raise ValueError(
                    f"{role} {os.fspath(source)!r} is a whole vision-language model ({found.get('model_type')}), not a "
                    f"{'vision encoder' if role == 'vision_model' else 'causal LM'}. To start from it, convert it: "
                    f"`tinylmm convert {os.fspath(source)} OUT_DIR`."
                )
        vision = AutoModel.from_pretrained(vision_model)
        vision_config = vision_part(vision.config)
        if vision_config is not vision.config:
            vision = vision.vision_model
        text = AutoModelForCausalLM.from_pretrained(text_model)
        rows = text.config.vocab_size
        if image_token_id is None:
            image_token_id = rows
        needed = max(rows, image_token_id + 1, vocab_size or 0)
        if needed > rows:  # new rows start at the mean of the old ones (transformers' resizing)
            text.resize_token_embeddings(needed)
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
        model.tie_weights()
        return model


TinyLMMConfig.register_for_auto_class()
TinyLMMModel.register_for_auto_class("AutoModel")
TinyLMMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["TinyLMMPreTrainedModel", "TinyLMMModel", "TinyLMMForConditionalGeneration"]
