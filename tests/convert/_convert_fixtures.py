"""Tiny random checkpoints in the formats `tinylmm convert` reads, built with transformers' own classes (LLaVA,
LLaVA-OneVision) or written the way TinyLLaVA_Factory writes its folders, plus the comparison helpers."""

from __future__ import annotations

import numpy as np
import torch
from _processor_fixtures import make_tokenizer, rgb
from conftest import IMAGE_TOKEN, text_config, vision_config

from processors import CHAT_TEMPLATES

VIDEO_TOKEN_ID = IMAGE_TOKEN - 1  # <video> in the fixtures' tokenizer

# The chat template llava-hf ships with LLaVA-1.5 processors (images first, then text; no system prompt).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }} "
    "{% else %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# A non-square image (45 x 29): padding, cropping and resizing all differ on it.
IMAGE = rgb(45, 29, seed=1)
PROMPT = "USER: <image>\nwhat is in this image ? ASSISTANT:"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def report(what: str, diff: float) -> None:
    """The figure the closing note quotes (run pytest with -s to see it)."""
    print(f"\n[logits] {what}: max |Δ| = {diff:.3e}")


def llava_checkpoint(
    folder,
    vision: str = "clip",
    text: str = "llama",
    strategy: str = "default",
    image_mode: str = "crop",
    layer=-2,
    bias: bool = True,
    seed: int = 0,
):
    """A tiny `LlavaForConditionalGeneration` and its `LlavaProcessor`, saved to `folder`. `image_mode`:
    `crop` (CLIPImageProcessor: shorter side, centre crop, as llava-hf's LLaVA-1.5), `pad`
    (LlavaImageProcessor with do_pad) or `resize` (SigLIP's square resize)."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    vc = vision_config(vision)
    side = vc.image_size
    prefix = 1 if vision == "clip" else 0
    tokens = (side // vc.patch_size) ** 2 + prefix - (strategy == "default")
    config = LlavaConfig(
        vision_config=vc.to_dict(),
        text_config=text_config(text).to_dict(),
        image_token_index=IMAGE_TOKEN,
        image_seq_length=tokens,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        multimodal_projector_bias=bias,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    mean, std = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    if vision != "clip":
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    common = dict(image_mean=mean, image_std=std, crop_size={"height": side, "width": side})
    if image_mode == "crop":
        image_processor = CLIPImageProcessor(size={"shortest_edge": side}, do_center_crop=True, **common)
    elif image_mode == "pad":
        image_processor = LlavaImageProcessorPil(
            do_pad=True, size={"height": side, "width": side}, do_center_crop=False, **common
        )
    else:
        image_processor = CLIPImageProcessor(
            size={"height": side, "width": side}, do_center_crop=False, **common
        )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=make_tokenizer("vicuna"),
        patch_size=vc.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=prefix,
        chat_template=LLAVA_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def video_frames(n: int, side: int, seed: int = 3) -> list[np.ndarray]:
    """`n` random frames (H, W, 3) at the crop size, so that no processor resizes them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


__all__ = ["IMAGE", "PROMPT", "VIDEO_TOKEN_ID", "llava_checkpoint", "make_tokenizer", "max_diff", "report"]


def onevision_checkpoint(folder, aspect: str = "anyres_max_2", seed: int = 0):
    """A tiny `LlavaOnevisionForConditionalGeneration` (SigLIP 32 px / 8 px patches: 4x4 tokens per crop, pinpoints
    up to 3x3 crops) and its processor (images and text: the video processor needs torchvision), saved."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from trainers.convert.onevision import OneVisionImageTextProcessor, save_processor

    vc = vision_config("siglip")
    side = vc.image_size
    pinpoints = [[side * i, side * j] for i in range(1, 4) for j in range(1, 4)]
    config = LlavaOnevisionConfig(
        vision_config={**vc.to_dict(), "vision_use_head": False},
        text_config=text_config("qwen2").to_dict(),
        image_token_index=IMAGE_TOKEN,
        video_token_index=VIDEO_TOKEN_ID,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio=aspect,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    processor = OneVisionImageTextProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": side, "width": side},
            image_grid_pinpoints=pinpoints,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
        ),
        tokenizer=make_tokenizer("chatml"),
        num_image_tokens=(side // vc.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect,
        chat_template=CHAT_TEMPLATES["chatml"],
    )
    model.save_pretrained(folder)
    save_processor(processor, folder)
    return model, processor


def onevision_videos(processor, frames: list[np.ndarray], prompt: str) -> dict:
    """What LLaVA-OneVision's video processor and processor make of frames already at the crop size (no
    resize): normalised frames as `pixel_values_videos`, `<video>` expanded to frames · ⌈t/2⌉² + 1 tokens."""
    import math

    ip = processor.image_processor
    mean, std = np.asarray(ip.image_mean)[:, None, None], np.asarray(ip.image_std)[:, None, None]
    pixels = np.stack([((f.transpose(2, 0, 1) / 255.0) - mean) / std for f in frames]).astype(np.float32)
    pooled = math.ceil(math.isqrt(processor.num_image_tokens) / 2)
    text = prompt.replace("<video>", "<video>" * (len(frames) * pooled * pooled + 1))
    ids = processor.tokenizer(text, return_tensors="pt")
    return {**ids, "pixel_values_videos": torch.from_numpy(pixels)[None]}


# -- a tiny replica of TinyLLaVA_Factory's format ---------------------------------------------------------

TINYLLAVA_IMAGE_INDEX = -200  # the Factory's image placeholder: an index, not a vocabulary id
TINYLLAVA_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant . USER: <image>\n"
    "what is in this image ? ASSISTANT:"
)


def tinyllava_tokenizer():
    """A word-level tokenizer without <image> (the Factory never adds one); the LLM has spare embedding rows
    beyond it, as Phi-2's and Qwen2's have."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = (
        "<pad> <s> </s> <unk> A a chat between curious user and an artificial intelligence assistant . USER "
        "ASSISTANT : what is in this image ? red blue circle square yes no"
    ).split(" ")
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


class TinyLlavaReplica(torch.nn.Module):
    """TinyLLaVA's model, from the format's facts: a causal LM, the HF vision model inside `vision_tower`, an
    `nn.Sequential` connector; features of hidden state `layer`, token 0 dropped under `patch`, spliced
    where the prompt holds −200."""

    def __init__(self, text, vision, layer: int = -2, strategy: str = "patch"):
        from transformers import AutoModel, AutoModelForCausalLM

        super().__init__()
        self.language_model = AutoModelForCausalLM.from_config(text)
        self.vision_tower = torch.nn.Module()
        self.vision_tower._vision_tower = AutoModel.from_config(vision)
        self.connector = torch.nn.Module()
        self.connector._connector = torch.nn.Sequential(
            torch.nn.Linear(vision.hidden_size, text.hidden_size),
            torch.nn.GELU(),
            torch.nn.Linear(text.hidden_size, text.hidden_size),
        )
        self.layer, self.strategy = layer, strategy

    @torch.no_grad()
    def forward(self, input_ids: list[int], images: torch.Tensor) -> torch.Tensor:
        states = self.vision_tower._vision_tower(images, output_hidden_states=True).hidden_states[self.layer]
        features = self.connector._connector(states[:, 1:] if self.strategy == "patch" else states)
        embed = self.language_model.get_input_embeddings()
        pieces, chunk, image = [], [], 0
        for token in input_ids + [None]:
            if token is None or token == TINYLLAVA_IMAGE_INDEX:
                pieces.append(embed(torch.tensor(chunk, dtype=torch.long)))
                chunk = []
                if token is not None:
                    pieces.append(features[image])
                    image += 1
            else:
                chunk.append(token)
        return self.language_model(inputs_embeds=torch.cat(pieces)[None]).logits


def tinyllava_inputs(tokenizer, image_processor, image, prompt: str, pad: bool):
    """The Factory's preprocessing: expand to a square in the mean colour (`pad`), the vision model's image
    processor, and the prompt tokenised around each <image> with −200 between the pieces."""
    from PIL import Image

    if pad:
        w, h = image.size
        side = max(w, h)
        square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in image_processor.image_mean))
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        image = square
    pixels = image_processor(images=image, return_tensors="pt")["pixel_values"]
    ids = []
    for i, chunk in enumerate(prompt.split("<image>")):
        if i:
            ids.append(TINYLLAVA_IMAGE_INDEX)
        ids += tokenizer(chunk)["input_ids"]
    return ids, pixels


def tinyllava_checkpoint(
    folder,
    vision: str = "siglip",
    layout: str = "hub",
    aspect: str = "pad",
    text: str = "llama",
    seed: int = 0,
):
    """Write a tiny TinyLLaVA checkpoint: `hub` (one model file at the root, as the Hub format and finetune
    folders) or `pretrain` (language_model/, vision_tower/, connector/ with a pytorch_model.bin each). Vision
    weights carry the `vision_model.` prefix that the transformers 4.x the Factory pins gives them."""
    import json
    import os

    from safetensors.torch import save_file

    tokenizer = tinyllava_tokenizer()
    name = text
    text = text_config(name, vocab_size=40, pad_token_id=0)
    vc = vision_config(vision)
    torch.manual_seed(seed)
    model = TinyLlavaReplica(text, vc).eval()
    config = {
        "model_type": "tinyllava",
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration.TinyLlavaConfig",
            "AutoModelForCausalLM": f"modeling_tinyllava_{name}.TinyLlavaForConditionalGeneration",
        },
        "llm_model_name_or_path": f"tiny/{name}",
        "vision_model_name_or_path": f"tiny/{vision}",
        "connector_type": "mlp2x_gelu",
        "text_config": text.to_dict(),
        "vision_config": {**vc.to_dict(), "model_name_or_path": f"tiny/{vision}"},
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
        "image_token_index": TINYLLAVA_IMAGE_INDEX,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "image_aspect_ratio": aspect,
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": 2048,
    }
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    tokenizer.save_pretrained(folder)
    llm = dict(model.language_model.state_dict())
    tower = {f"vision_model.{k}": v for k, v in model.vision_tower._vision_tower.state_dict().items()}
    connector = {f"_connector.{k}": v for k, v in model.connector._connector.state_dict().items()}
    if layout == "hub":
        weights = {f"language_model.{k}": v for k, v in llm.items()}
        weights |= {f"vision_tower._vision_tower.{k}": v for k, v in tower.items()}
        weights |= {f"connector.{k}": v for k, v in connector.items()}
        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(folder, "model.safetensors"))
    else:
        for part, weights, sub_config in (
            ("language_model", llm, text),
            ("vision_tower", tower, vc),
            ("connector", connector, None),
        ):
            os.makedirs(os.path.join(folder, part), exist_ok=True)
            torch.save(weights, os.path.join(folder, part, "pytorch_model.bin"))
            if sub_config is not None:
                sub_config.save_pretrained(os.path.join(folder, part))
    return model, tokenizer
