"""A tiny chat model and what `model.generate` answers, computed apart from the chat engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from trainers.demo import QUICK, world
from trainers.demo.pipeline import build_start

# The demo's tiny model with random weights drawn wide (std 0.5): its greedy answers change with the image and
# with the turn, so a chat that lost the image or the history would show another answer.
SETTINGS = replace(QUICK, text_init_std=0.5)
MAX_NEW_TOKENS = 12
# Questions in the demo world's own words, the first with the short-answer instruction its training chats
# start with: a model trained by `tinylmm demo` answers them ("3", "yes").
QUESTIONS = (
    "How many shapes are there? Answer the question using a single word or phrase.",
    "Is there a circle in the image?",
)


def make_model(folder: Path) -> tuple[Path, list[Path]]:
    """The model folder and two scene images."""
    build_start(folder / "model", SETTINGS)
    return folder / "model", scene_images(folder)


def scene_images(folder: Path) -> list[Path]:
    """Two held-out scenes of the demo world, as PNG files."""
    scenes = world.generate_scenes(2, seed=3, held_out=True)
    images = []
    for i, scene in enumerate(scenes):
        path = folder / f"scene{i}.png"
        world.render(scene, SETTINGS.image_size).save(path)
        images.append(path)
    return images


def generate(folder: Path, turns: list[tuple[str, list[Path]]]) -> list[str]:
    """Greedy answers of `model.generate`, turn by turn: each turn's prompt holds the earlier turns and
    answers; a turn's images go before its question."""
    from PIL import Image

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    messages, answers = [], []
    for question, images in turns:
        content = [{"type": "image", "image": Image.open(path).convert("RGB")} for path in images]
        content.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": content})
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append(answer.strip())
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[-1]}]})
    return answers
