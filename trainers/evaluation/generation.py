"""Greedy answers from a checkpoint: load it through the Auto classes, batch prompts with their images, decode
with the KV cache, stop at the chat template's end of turn."""

from __future__ import annotations

import json
import os

import torch
from PIL import Image
from tqdm.auto import tqdm

from processors.chat_templates import end_of_turn_ids

from .benchmarks import SHORT_ANSWER, Sample

BLANK_GREY = (128, 128, 128)


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Raise a clear error unless `folder` is a tinylmm checkpoint (config of model_type tinylmm)."""
    folder = str(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{folder} is not a tinylmm checkpoint: it has no config.json.")
    with open(config_file, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != "tinylmm":
        raise ValueError(
            f"{folder} is not a tinylmm checkpoint: its config.json has model_type {model_type!r}, "
            "expected 'tinylmm'."
        )


def load_model(folder: str | os.PathLike, device: str | None = None, trust_remote_code: bool = False):
    """(model, processor) from a checkpoint folder through the Auto classes, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_tinylmm  # noqa: F401  (registers the Auto classes)
    import processors  # noqa: F401

    check_checkpoint(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def _open_image(value, blank: bool) -> Image.Image:
    image = value if isinstance(value, Image.Image) else Image.open(value)
    image = image.convert("RGB")
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
            conversations, images = [], []
            for i in batch:
                s = samples[i]
                text = f"{s.prompt}\n{prompt_suffix}" if prompt_suffix else s.prompt
                content = [{"type": "text", "text": text}]
                if s.image is not None:
                    content.insert(0, {"type": "image"})
                    images.append([_open_image(s.image, blank_images)])
                else:
                    images.append([])
                conversations.append([{"role": "user", "content": content}])
            inputs = processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                padding=True,
                images=images if any(images) else None,
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
