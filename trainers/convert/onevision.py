"""transformers' LLaVA-OneVision (`model_type: llava_onevision`, the llava-hf OneVision checkpoints): in and out.

Module names and the projector are LLaVA's (see llava.py), plus `image_newline`, which tinylmm's AnyRes
layouts use the same way: after every row of the unpadded, interpolated crop grid, after each image of a
multi-image sample (each padded to a square, one crop) and once after all frames of a video (each frame's
grid pooled 2x2 bilinearly). `vision_aspect_ratio: anyres_max_N` is tinylmm's `image_aspect_ratio`; a tinylmm
model in plain `anyres` exports as `anyres_max_<most crops of any pinpoint>`, which never interpolates.

transformers builds OneVision's processor with a video processor that needs torchvision; where torchvision
is missing (a CPU-only torch), `OneVisionImageTextProcessor` is the same processor without it (images and
text), and an exported folder gets the video processor's settings written into processor_config.json, so
that `AutoProcessor.from_pretrained` builds the full processor wherever torchvision is installed.
"""

from __future__ import annotations

import json
import os

from transformers import LlavaOnevisionProcessor

from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
from processors import IMAGE_TOKEN, VIDEO_TOKEN

from .llava import (
    check_exportable,
    processor_for,
    projector_in,
    strategy_in,
    strategy_out,
    tokenizer_of,
    vision_out,
    weights_out,
)
from .source import ConversionError
from .target import build, conversion_card, export_card


class OneVisionImageTextProcessor(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor without its video processor (images and text only): what can be built where
    torchvision is not installed. Saved folders name `LlavaOnevisionProcessor` (see `save_processor`)."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )
        self.video_processor = None


def save_processor(processor: OneVisionImageTextProcessor, dst: str) -> None:
    """Save an images-only OneVision processor as the full LlavaOnevisionProcessor: its class name, and the
    video processor's settings (frames resized to the crop size, the image normalisation)."""
    processor.save_pretrained(dst)
    path = os.path.join(dst, "processor_config.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    ip = processor.image_processor
    size = {"height": ip.size.height, "width": ip.size.width}
    saved["processor_class"] = "LlavaOnevisionProcessor"
    saved["video_processor"] = {
        "video_processor_type": "LlavaOnevisionVideoProcessor",
        "do_resize": True,
        "size": size,
        "resample": int(ip.resample),
        "do_rescale": True,
        "rescale_factor": ip.rescale_factor,
        "do_normalize": True,
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "do_convert_rgb": True,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(saved, f, indent=2)
        f.write("\n")


def _image_options(ip, side: int, folder: str) -> dict:
    size = ip.size
    if not (ip.do_resize and ip.do_rescale and ip.do_normalize) or not size.height == size.width == side:
        raise ConversionError(
            f"{folder}: the OneVision image processor must resize to {side}x{side} crops, rescale and normalise; "
            f"it has size={ {k: v for k, v in dict(size).items() if v} }, do_resize={ip.do_resize}."
        )
    return dict(image_mean=list(ip.image_mean), image_std=list(ip.image_std), resample=int(ip.resample))


# -- in ------------------------------------------------------------------------------------------------


def to_tinylmm(folder: str, source: str, chat_template: str | None = None):
    """(model, processor, card) of a transformers LLaVA-OneVision folder."""
    from transformers import AutoImageProcessor, LlavaOnevisionForConditionalGeneration

    src = LlavaOnevisionForConditionalGeneration.from_pretrained(folder, dtype="auto")
    oc = src.config
    side = oc.vision_config.image_size
    options = _image_options(AutoImageProcessor.from_pretrained(folder), side, folder)
    config = TinyLMMConfig(
        vision_config=oc.vision_config.to_dict(),
        text_config=oc.text_config.to_dict(),
        image_token_id=oc.image_token_id,
        video_token_id=oc.video_token_id,
        vision_feature_layer=oc.vision_feature_layer,
        vision_feature_select_strategy=strategy_in(oc.vision_feature_select_strategy, oc.vision_config),
        projector_hidden_act=oc.projector_hidden_act,
        connector_type="mlp2x_gelu",
        image_aspect_ratio=oc.vision_aspect_ratio,
        image_grid_pinpoints=[list(p) for p in oc.image_grid_pinpoints],
        video_pool_stride=2,  # OneVision pools every frame's grid 2x2
        tie_word_embeddings=oc.tie_word_embeddings,
    )
    weights = dict(src.state_dict())
    mapped = projector_in(weights, "model.", oc.text_config.hidden_size)
    mapped.update(weights)
    model, dropped = build(TinyLMMForConditionalGeneration, config, mapped, folder, ("model.vision_tower.",))
    tokenizer, notes = tokenizer_of(folder)
    processor, which = processor_for(config, tokenizer, folder, chat_template, options, IMAGE_TOKEN)
    card = conversion_card(
        source,
        "llava_onevision",
        [
            f"images: {config.image_aspect_ratio!r} over {len(config.image_grid_pinpoints)} pinpoints; multi-image "
            "samples padded; videos pooled 2x2",
            f"{len(dropped)} vision-tower weights the model never reads were left out (post-layernorm, pooling head)",
            f"chat template: {which}",
            *notes,
        ],
    )
    return model, processor, card


# -- out -----------------------------------------------------------------------------------------------


def from_tinylmm(model, processor, dst: str, source: str) -> str:
    """Write a tinylmm model (CLIP / SigLIP + mlp2x_gelu, AnyRes images) as a transformers LLaVA-OneVision
    folder that `LlavaOnevisionForConditionalGeneration` and `AutoProcessor` load without remote code."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    config = model.config
    check_exportable(config, "LLaVA-OneVision", ("anyres",))
    if config.video_pool_stride != 2:
        raise ConversionError(
            f"video_pool_stride {config.video_pool_stride} has no LLaVA-OneVision equivalent (it pools 2x2)."
        )
    ip = processor.image_processor
    if ip.max_crops is not None:
        aspect = config.image_aspect_ratio
    else:  # no interpolation: a budget no grid reaches
        side = ip.crop_size
        aspect = f"anyres_max_{max(h // side * (w // side) for h, w in ip.image_grid_pinpoints)}"
    vision, layers, extra = vision_out(model)
    strategy = strategy_out(config)
    video_token_id = config.video_token_id
    if video_token_id is None:  # videos share the image placeholder in tinylmm; OneVision needs its own token
        vocab = processor.tokenizer.get_vocab()
        video_token_id = vocab.get(VIDEO_TOKEN, config.image_token_id)
    videos = video_token_id != config.image_token_id
    oc = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        video_token_index=video_token_id,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layers,
        multimodal_projector_bias=True,
        image_grid_pinpoints=ip.image_grid_pinpoints,
        vision_aspect_ratio=aspect,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    ov, _ = build(
        LlavaOnevisionForConditionalGeneration, oc, weights_out(model, extra), "export to llava_onevision"
    )
    ov.generation_config = model.generation_config
    side = ip.crop_size
    out = OneVisionImageTextProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": side, "width": side},
            image_grid_pinpoints=ip.image_grid_pinpoints,
            image_mean=ip.image_mean,
            image_std=ip.image_std,
            resample=ip.resample,
        ),
        tokenizer=processor.tokenizer,
        num_image_tokens=config.image_seq_length,
        vision_feature_select_strategy=strategy,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        video_token=VIDEO_TOKEN if videos else processor.image_token,
        vision_aspect_ratio=aspect,
    )
    ov.save_pretrained(dst)
    save_processor(out, dst)
    with open(os.path.join(dst, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            export_card(
                "LLaVA-OneVision export of a tinylmm model",
                source,
                [
                    "loads with LlavaOnevisionForConditionalGeneration / AutoProcessor, no remote code (the video "
                    "processor needs torchvision)",
                    f"images: {aspect!r}; vision tower: the {vision['num_hidden_layers']} blocks the model reads, "
                    f"feature layer {layers}, strategy {strategy!r}",
                    f"videos: {VIDEO_TOKEN} (id {video_token_id})"
                    if videos
                    else f"videos: none (the tokenizer has no {VIDEO_TOKEN} token)",
                ],
                "LlavaOnevisionForConditionalGeneration",
            )
        )
    return dst
