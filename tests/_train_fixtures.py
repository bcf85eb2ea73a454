"""Helpers for the trainer tests: tiny models with their processors, image folders, LLaVA rows, CPU configs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _processor_fixtures import make_processor, rgb
from conftest import tiny_model
from trl import SFTConfig

from trainers.arguments import training_fields

CAPTIONS = ["a red circle", "a blue square", "two green triangle", "a yellow circle", "three blue shapes"]
QUESTIONS = ["what is in this image ?", "how many shapes are there ?", "what color is it ?"]
ANSWERS = ["a red circle .", "two", "it is blue ."]
# The token that ends an assistant turn, per chat template (inside its {% generation %} block).
END_OF_TURN = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "phi3": "<|end|>",
    "gemma": "<end_of_turn>",
    "vicuna": "</s>",
    "plain": "</s>",
}
FAMILY = {
    "chatml": "chatml",
    "llama3": "llama3",
    "phi3": "phi3",
    "gemma": "gemma",
    "vicuna": "vicuna",
    "plain": "vicuna",
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads that wait
    on each other make a training step 20-40x slower. Import this into a test module to use it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_and_processor(template: str = "chatml", seed: int = 0, **model_kwargs):
    """A tiny random model in train mode and the processor that matches it."""
    model = tiny_model(seed=seed, **model_kwargs).train()
    processor = make_processor(FAMILY[template], chat_template=template, config=model.config)
    return model, processor


def write_images(folder, n: int, size=(40, 30)) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        rgb(*size, seed=i).save(os.path.join(folder, name))
        names.append(name)
    return names


def caption_rows(images: list[str]) -> list[dict]:
    """LLaVA-format alignment rows: an image and its caption."""
    return [
        {
            "id": str(i),
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\ndescribe the image ."},
                {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)] + " ."},
            ],
        }
        for i, name in enumerate(images)
    ]


def chat_rows(images: list[str], turns: int = 2) -> list[dict]:
    """LLaVA-format multi-turn rows."""
    rows = []
    for i, name in enumerate(images):
        conversation = []
        for t in range(turns):
            question = QUESTIONS[(i + t) % len(QUESTIONS)]
            conversation += [
                {"from": "human", "value": ("<image>\n" if t == 0 else "") + question},
                {"from": "gpt", "value": ANSWERS[(i + t) % len(ANSWERS)]},
            ]
        rows.append({"id": str(i), "image": name, "conversations": conversation})
    return rows


def write_json(path, rows) -> str:
    with open(path, "w") as f:
        if str(path).endswith(".jsonl"):
            f.writelines(json.dumps(r) + "\n" for r in rows)
        else:
            json.dump(rows, f)
    return str(path)


def cpu_config(output_dir, **overrides) -> SFTConfig:
    """An SFTConfig for a few CPU steps: fp32, no logging integrations, nothing saved unless asked."""
    options = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        max_steps=2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    options.update(overrides)
    return SFTConfig(**training_fields(options))
