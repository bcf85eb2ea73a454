"""Greedy answers from a checkpoint: load it through the Auto classes, batch prompts with their images, decode
with the KV cache, stop at the chat template's end of turn."""

from __future__ import annotations

import json
import os

import torch
from PIL import Image
from tqdm.auto import tqdm

from processors.chat_templates import end_of_turn_ids
from processors.image_processing_tinylmm import load_image

from .benchmarks import SHORT_ANSWER, Sample

BLANK_GREY = (128, 128, 128)
# The user's text of every benchmark question: the question, then the prompt suffix on its own line (recorded
# with each evaluation: a suffix can move a small model's score from 100 % to 8 %).
PROMPT_FORMAT = "{question}\n{suffix}"


def prompt_text(question: str, suffix: str | None) -> str:
    return PROMPT_FORMAT.format(question=question, suffix=suffix) if suffix else question


def check_positive(**values: int) -> None:
    """Raise on a batch size or token count below 1 (a batch size of -1 would run no batch at all and
    leave every answer empty)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_checkpoint(folder: str | os.PathLike, trust_remote_code: bool = False) -> str:
    """Raise a clear error unless `folder` holds a checkpoint `AutoModelForImageTextToText` loads: tinylmm,
    any image-text-to-text model transformers knows (LLaVA, LLaVA-OneVision …), or, with
    `trust_remote_code`, one whose config maps that class to its own code. Returns its model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    folder = str(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{folder} is not a model checkpoint: it has no config.json.")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    model_type = config.get("model_type")
    remote = trust_remote_code and "AutoModelForImageTextToText" in config.get("auto_map", {})
    if (
        model_type != "tinylmm"
        and model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        and not remote
    ):
        raise ValueError(
            f"{folder} is not an image-text-to-text checkpoint: its config.json has model_type {model_type!r}, "
            "which AutoModelForImageTextToText does not load. A TinyLLaVA checkpoint: `tinylmm convert "
            f"{folder} DST` first."
        )
    return model_type


def load_model(folder: str | os.PathLike, device: str | None = None, trust_remote_code: bool = False):
    """(model, processor) from a checkpoint folder through the Auto classes, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_tinylmm  # noqa: F401  (registers the Auto classes)
    import processors  # noqa: F401

    model_type = check_checkpoint(folder, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ImportError:
        if model_type != "llava_onevision":
            raise
        # Its video processor needs torchvision; without it, the same processor for images and text.
        from trainers.convert.onevision import OneVisionImageTextProcessor

        processor = OneVisionImageTextProcessor.from_pretrained(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def _open_image(value, blank: bool) -> Image.Image:
    image = load_image(value)  # upright, 8-bit RGB, a bad file named
    return Image.new("RGB", image.size, BLANK_GREY) if blank else image


@torch.no_grad()
def generate_answers(
    model,
    processor,
    samples: list[Sample],
    prompt_suffix: str = SHORT_ANSWER,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    blank_images: bool = False,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers, in the order of `samples`. Batches are padded on the left (so that every prompt
    ends where generation starts) and decoded with the KV cache. `blank_images` replaces every image by
    a constant grey one of the same size (what the model answers without seeing)."""
    check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens)
    tokenizer = processor.tokenizer
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt))  # less padding
    answers: list[str] = [""] * len(samples)
    stop = end_of_turn_ids(processor.chat_template, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            conversations = []
            for i in batch:
                s = samples[i]
                text = prompt_text(s.prompt, prompt_suffix)
                content = [{"type": "text", "text": text}]
                if s.image is not None:
                    # In the message's parts: tinylmm's processors and transformers' (LLaVA, OneVision …)
                    # both take images there.
                    content.insert(0, {"type": "image", "image": _open_image(s.image, blank_images)})
                conversations.append([{"role": "user", "content": content}])
            inputs = processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                processor_kwargs={"padding": True},
                return_tensors="pt",
            ).to(device)
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                eos_token_id=stop,
                pad_token_id=pad,
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = side
    return answers
