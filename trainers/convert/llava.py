"""transformers' LLaVA (`model_type: llava`, every llava-hf LLaVA-1.5 checkpoint): in and out.

The two models compute the same thing: LLaVA's `vision_tower` / `multi_modal_projector` (`linear_1`, act,
`linear_2`) / `language_model` / `lm_head` are tinylmm's `vision_tower` / `mlp2x_gelu` connector (`mlp.0`,
act, `mlp.2`) / `language_model` / `lm_head`. What needs care:

- feature selection: LLaVA's `default` drops token 0 whatever it is, a CLS token for CLIP but a patch for
  SigLIP, so it is tinylmm's `default` for CLIP and `drop_first` for SigLIP; `full` is `full`;
- images: llava-hf's LLaVA-1.5 processors resize the shorter side and centre-crop (CLIPImageProcessor),
  which is tinylmm's `crop` mode; LlavaImageProcessor with `do_pad` is `pad`; a square resize is `resize`;
- the vision tower: tinylmm keeps only the blocks it reads, so an exported tower has that many layers and
  its feature layers count from there (vLLM builds the tower up to the feature layer the same way);
- `multimodal_projector_bias: false` becomes zero biases.
"""

from __future__ import annotations

import os

import torch

from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
from modeling_tinylmm.vision_features import backbone
from processors import IMAGE_TOKEN, TinyLMMProcessor

from .source import ConversionError
from .target import build, choose_chat_template, conversion_card, export_card, source_chat_template

# Vision backbones transformers' LLaVA and vLLM's native LLaVA both take.
EXPORTABLE_VISION = ("clip_vision_model", "siglip_vision_model")
_PROJECTOR = {
    "multi_modal_projector.linear_1.": "connector.mlp.0.",
    "multi_modal_projector.linear_2.": "connector.mlp.2.",
}


# -- shared with the other formats ---------------------------------------------------------------------


def strategy_in(strategy: str, vision_config) -> str:
    """tinylmm's select strategy for transformers' LLaVA-family `vision_feature_select_strategy`."""
    if strategy == "full":
        return "full"
    if strategy != "default":
        raise ConversionError(f"vision_feature_select_strategy {strategy!r} is not one LLaVA knows.")
    return "default" if backbone(vision_config).num_prefix_tokens == 1 else "drop_first"


def strategy_out(config: TinyLMMConfig) -> str:
    """transformers' LLaVA-family strategy that selects what tinylmm's selects."""
    bb, strategy = config.vision_backbone, config.vision_feature_select_strategy
    drops = {"default": bb.num_prefix_tokens, "full": 0, "drop_first": 1}[strategy]
    if drops == 0:
        return "full"
    if drops == 1:
        return "default"
    raise ConversionError(
        f"vision_feature_select_strategy {strategy!r} drops {drops} tokens of {bb.model_type}; LLaVA drops 0 or 1."
    )


def projector_in(weights: dict[str, torch.Tensor], prefix: str, hidden: int) -> dict[str, torch.Tensor]:
    """LLaVA projector weights under `prefix` as tinylmm connector weights (zero biases where it has none)."""
    out = {}
    for src, dst in _PROJECTOR.items():
        weight = weights.pop(f"{prefix}{src}weight")
        out[f"model.{dst}weight"] = weight
        bias = weights.pop(f"{prefix}{src}bias", None)
        out[f"model.{dst}bias"] = (
            bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
        )
    return out


def image_options(image_processor, side: int, where: str) -> dict:
    """TinyLMMImageProcessor options that reproduce a transformers CLIP / SigLIP / LLaVA image processor
    exactly: the mode (`pad`, `crop` or `resize`), the normalisation and the resampling filter."""
    ip = image_processor
    size, crop = ip.size, getattr(ip, "crop_size", None)
    centre = bool(getattr(ip, "do_center_crop", False))
    settings = (
        f"size={ {k: v for k, v in dict(size).items() if v} }, do_center_crop={centre}, "
        f"crop_size={ {k: v for k, v in dict(crop).items() if v} if crop else None }, "
        f"do_pad={getattr(ip, 'do_pad', False)}"
    )
    if not (ip.do_resize and ip.do_rescale and ip.do_normalize) or abs(ip.rescale_factor - 1 / 255) > 1e-9:
        raise ConversionError(
            f"{where}: the image processor does not resize, rescale by 1/255 and normalise ({settings}); "
            "tinylmm's image processor always does."
        )
    crop_fits = not centre or (crop is not None and crop.height == crop.width == side)
    square = size.height == size.width == side or size.shortest_edge == side
    if getattr(ip, "do_pad", False) and square and crop_fits:
        mode = "pad"
    elif centre and size.shortest_edge == side and crop_fits:
        mode = "crop"
    elif size.height == size.width == side and crop_fits:
        mode = "resize"
    else:
        raise ConversionError(
            f"{where}: image processor settings {settings} do not give {side}x{side} crops the way pad, crop "
            "or resize do."
        )
    return dict(
        image_aspect_ratio=mode,
        image_mean=[float(m) for m in ip.image_mean],
        image_std=[float(s) for s in ip.image_std],
        resample=int(ip.resample),
    )


def tokenizer_of(folder: str):
    from transformers import AutoTokenizer

    # trust_remote_code=False: a TinyLLaVA config's auto_map must not make transformers ask to run its code
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    notes = []
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batched generation pads; EOS as pad, as TRL does
        notes.append("the tokenizer had no pad token: EOS pads")
    return tokenizer, notes


def processor_for(config, tokenizer, folder: str, chat_template: str | None, options: dict, token: str):
    if token != IMAGE_TOKEN:
        raise ConversionError(f"{folder}: image token {token!r}; tinylmm's processors write {IMAGE_TOKEN!r}.")
    template, which = choose_chat_template(chat_template, source_chat_template(folder, tokenizer), tokenizer)
    processor = TinyLMMProcessor.from_config(config, tokenizer=tokenizer, chat_template=template, **options)
    return processor, which


def vision_out(model) -> tuple[dict, int | list[int], dict]:
    """(vision config dict, feature layer(s), extra vision weights) of a tinylmm model's tower as an
    exported model builds it: only the blocks tinylmm keeps, layers counted from the last kept one, no
    pooling head, and an identity post-layernorm (the LLaVA family reads hidden states before it)."""
    config = model.config
    vision = config.vision_config.to_dict()
    kept = max(config.vision_layers)
    vision["num_hidden_layers"] = kept
    if vision.get("model_type") == "siglip_vision_model":
        vision["vision_use_head"] = False
    layers = [a - (kept + 1) for a in config.feature_layers]
    width = config.vision_config.hidden_size
    # tinylmm replaced the tower's post-layernorm by an identity: its name says where the exported one goes.
    name = next(n for n, _ in model.model.vision_tower.named_modules() if n.endswith("post_layernorm"))
    norm = {
        f"model.vision_tower.{name}.weight": torch.ones(width),
        f"model.vision_tower.{name}.bias": torch.zeros(width),
    }
    return vision, (layers[0] if isinstance(config.vision_feature_layer, int) else layers), norm


def check_exportable(config: TinyLMMConfig, to: str, modes: tuple[str, ...]) -> None:
    vision = config.vision_config.model_type
    if vision not in EXPORTABLE_VISION:
        raise ConversionError(
            f"vision backbone {vision!r} has no {to} equivalent ({', '.join(EXPORTABLE_VISION)} do); serve it "
            "through vLLM's transformers backend instead."
        )
    if config.connector_type != "mlp2x_gelu":
        raise ConversionError(
            f"connector {config.connector_type!r} has no {to} equivalent (mlp2x_gelu does); serve it through "
            "vLLM's transformers backend instead."
        )
    if config.image_aspect_ratio.split("_max_")[0] not in modes:
        other = "llava" if "OneVision" in to else "llava_onevision"
        raise ConversionError(
            f"image_aspect_ratio {config.image_aspect_ratio!r} has no {to} equivalent ({', '.join(modes)} "
            f"do); try --to {other}, or serve it through vLLM's transformers backend."
        )


def weights_out(model, extra: dict) -> dict[str, torch.Tensor]:
    """A tinylmm model's weights under the LLaVA family's names."""
    if getattr(model.lm_head, "bias", None) is not None:
        raise ConversionError(
            f"the {model.config.text_config.model_type} LM head has a bias, which the LLaVA family's LM head does "
            "not hold; serve it through vLLM's transformers backend instead."
        )
    out = {}
    for name, tensor in model.state_dict().items():
        for dst, src in _PROJECTOR.items():
            if name.startswith(f"model.{src}"):
                name = f"model.{dst}{name[len(f'model.{src}') :]}"
        out[name] = tensor
    out.update({k: v.to(out["lm_head.weight"].dtype) for k, v in extra.items()})
    return out


# -- in ------------------------------------------------------------------------------------------------


def to_tinylmm(folder: str, source: str, chat_template: str | None = None):
    """(model, processor, card) of a transformers LLaVA folder."""
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    src = LlavaForConditionalGeneration.from_pretrained(folder, dtype="auto")
    lc = src.config
    if lc.vision_config.model_type not in ("clip_vision_model", "siglip_vision_model", "dinov2", "vit"):
        raise ConversionError(f"{folder}: vision backbone {lc.vision_config.model_type!r} is not supported.")
    options = image_options(
        AutoImageProcessor.from_pretrained(folder, trust_remote_code=False),
        lc.vision_config.image_size,
        folder,
    )
    config = TinyLMMConfig(
        vision_config=lc.vision_config.to_dict(),
        text_config=lc.text_config.to_dict(),
        image_token_id=lc.image_token_id,
        vision_feature_layer=lc.vision_feature_layer,
        vision_feature_select_strategy=strategy_in(lc.vision_feature_select_strategy, lc.vision_config),
        projector_hidden_act=lc.projector_hidden_act,
        connector_type="mlp2x_gelu",
        image_aspect_ratio=options.pop("image_aspect_ratio"),
        tie_word_embeddings=lc.tie_word_embeddings,
    )
    weights = dict(src.state_dict())
    mapped = projector_in(weights, "model.", lc.text_config.hidden_size)
    mapped.update(weights)
    model, dropped = build(TinyLMMForConditionalGeneration, config, mapped, folder, ("model.vision_tower.",))
    tokenizer, notes = tokenizer_of(folder)
    token = _processor_field(folder, "image_token", IMAGE_TOKEN)
    processor, which = processor_for(config, tokenizer, folder, chat_template, options, token)
    card = conversion_card(
        source,
        "llava",
        [
            f"vision_feature_select_strategy {lc.vision_feature_select_strategy!r} → "
            f"{config.vision_feature_select_strategy!r}; images: {config.image_aspect_ratio!r}",
            f"{len(dropped)} vision-tower weights the model never reads were left out (blocks after layer "
            f"{max(config.vision_layers)}, post-layernorm, pooling head)",
            f"chat template: {which}",
            *notes,
        ],
    )
    return model, processor, card


def _processor_field(folder: str, key: str, default):
    import json

    path = os.path.join(folder, "processor_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(key, default)
    return default


# -- out -----------------------------------------------------------------------------------------------


def from_tinylmm(model, processor, dst: str, source: str) -> str:
    """Write a tinylmm model (CLIP / SigLIP + mlp2x_gelu, pad / resize / crop images) as a transformers LLaVA
    folder that `LlavaForConditionalGeneration` and `AutoProcessor` load without remote code."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    config = model.config
    check_exportable(config, "LLaVA", ("pad", "resize", "crop"))
    vision, layers, extra = vision_out(model)
    strategy = strategy_out(config)
    lc = LlavaConfig(
        vision_config=vision,
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layers,
        multimodal_projector_bias=True,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    llava, _ = build(LlavaForConditionalGeneration, lc, weights_out(model, extra), "export to llava")
    llava.generation_config = model.generation_config
    ip = processor.image_processor
    side, mode = ip.crop_size, ip.image_aspect_ratio
    image_processor = LlavaImageProcessorPil(
        do_pad=mode == "pad",
        size={"shortest_edge": side} if mode == "crop" else {"height": side, "width": side},
        do_center_crop=mode == "crop",
        crop_size={"height": side, "width": side},
        image_mean=ip.image_mean,
        image_std=ip.image_std,
        resample=ip.resample,
    )
    out = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=config.vision_backbone.num_prefix_tokens,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
    )
    llava.save_pretrained(dst)
    out.save_pretrained(dst)
    with open(os.path.join(dst, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            export_card(
                "LLaVA export of a tinylmm model",
                source,
                [
                    f"loads with LlavaForConditionalGeneration / AutoProcessor, no remote code; images: {mode!r}",
                    f"vision tower: the {vision['num_hidden_layers']} blocks the model reads; feature layer "
                    f"{layers}, strategy {strategy!r}",
                ],
                "LlavaForConditionalGeneration",
            )
        )
    return dst
