"""Training runs: tinylmm's trainer (loss, drop counts, resume), and tinylmm under stock TRL (API and CLI)."""

import json
import os
import re
import subprocess
import sys

import torch
from _processor_fixtures import rgb
from _train_fixtures import (
    caption_rows,
    chat_rows,
    cpu_config,
    model_and_processor,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from datasets import Dataset, Features, Image, List, Value
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import SFTConfig, SFTTrainer

from trainers.arguments import RecipeArguments, training_field
from trainers.collator import IGNORE_INDEX, TinyLMMCollator
from trainers.data import load_training_data
from trainers.stages import read_stage
from trainers.trainer import TinyLMMTrainer

SFT = RecipeArguments(recipe="test", stage="sft", train_modules=["connector", "language_model"])


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_learns_and_reports_dropped_samples(tmp_path):
    model, processor = model_and_processor("chatml")
    names = write_images(tmp_path, 4)
    too_long = {
        "image": names[0],
        "conversations": [
            {"from": "human", "value": "<image>\n" + "what is in this image ? " * 8},
            {"from": "gpt", "value": "a red circle ."},
        ],
    }
    dataset, _ = load_training_data(write_json(tmp_path / "d.json", chat_rows(names) + [too_long]))
    collator = TinyLMMCollator(processor, max_length=48)
    trainer = TinyLMMTrainer(
        model,
        args=cpu_config(tmp_path / "out", max_steps=9, learning_rate=3e-3, per_device_train_batch_size=5),
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        recipe=SFT,
    )
    metrics = trainer.train().metrics
    losses = _losses(trainer)
    assert losses[-1] < losses[0] - 0.5 and losses == sorted(losses, reverse=True), losses
    # One over-long sample per step (the whole dataset is one batch): counted, logged, in the final metrics.
    assert metrics["dropped_too_long"] == 9
    assert [h["dropped_too_long"] for h in trainer.state.log_history if "loss" in h] == list(range(1, 10))


def test_trainer_streams_a_llava_file(tmp_path):
    model, processor = model_and_processor("chatml")
    names = write_images(tmp_path, 4)
    dataset, _ = load_training_data(write_json(tmp_path / "d.jsonl", chat_rows(names)), streaming=True)
    trainer = TinyLMMTrainer(
        model,
        args=cpu_config(tmp_path / "out", max_steps=2),
        train_dataset=dataset,
        processing_class=processor,
        recipe=SFT,
    )
    assert trainer.train().global_step == 2


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    names = write_images(tmp_path, 6)
    text_only = {"conversations": [{"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "two"}]}
    dataset, _ = load_training_data(write_json(tmp_path / "d.json", caption_rows(names) + [text_only] * 2))

    def run(output_dir, resume=None, callbacks=()):
        model, processor = model_and_processor("chatml")
        args = cpu_config(output_dir, max_steps=6, save_strategy="steps", save_steps=3, warmup_steps=2)
        trainer = TinyLMMTrainer(
            model,
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            recipe=SFT,
            group_by_modality_length=True,
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "interrupted", callbacks=[_StopAt(3)])
    assert interrupted.state.global_step == 3
    checkpoint = tmp_path / "interrupted" / "checkpoint-3"
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.state.global_step == 6
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
    assert _losses(resumed)[-3:] == _losses(straight)[-3:]  # the same batches, in the same order
    # A checkpoint is a save_pretrained folder: Auto classes, code copied in, the stage that made it.
    assert {"modeling_tinylmm.py", "processing_tinylmm.py", "model.safetensors"} <= set(
        os.listdir(checkpoint)
    )
    assert read_stage(checkpoint) == "test/sft"
    AutoModelForImageTextToText.from_pretrained(checkpoint)
    AutoProcessor.from_pretrained(checkpoint)


# -- stock TRL -------------------------------------------------------------------------------------------


def _messages_dataset(n: int) -> Dataset:
    features = Features(
        {
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
            "images": List(Image()),
        }
    )
    rows = {
        "messages": [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "text": None},
                        {"type": "text", "text": "what is in this image ?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "a red circle ."}]},
                {"role": "user", "content": [{"type": "text", "text": "how many ?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "one"}]},
            ]
        ]
        * n,
        "images": [[rgb(40, 30, seed=i)] for i in range(n)],
    }
    return Dataset.from_dict(rows, features=features)


def test_stock_sft_trainer_with_assistant_only_loss(tmp_path):
    """No trainers/ code: a tinylmm model and processor handed to plain trl.SFTTrainer."""
    model, processor = model_and_processor("chatml")
    dataset = _messages_dataset(4)
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        bf16=False,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        assistant_only_loss=True,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    batch = trainer.data_collator([dataset[0], dataset[1]])
    supervised = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    tokenizer = processor.tokenizer
    assert (
        supervised
        == tokenizer("a red circle . <|im_end|> one <|im_end|>", add_special_tokens=False)["input_ids"]
    )
    ours = TinyLMMCollator(processor)([dataset[0]])
    assert torch.equal(ours["labels"][0], batch["labels"][0][: ours["labels"].shape[1]])
    trainer.train()
    losses = _losses(trainer)
    assert losses[-1] < losses[0] - 0.5, losses


def test_trl_sft_command_trains_a_tinylmm_checkpoint(tmp_path):
    model, processor = model_and_processor("chatml")
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "data").mkdir()
    _messages_dataset(8).to_parquet(tmp_path / "data" / "train.parquet")
    command = [
        sys.executable,
        "-m",
        "trl.cli.main",
        "sft",
        "--model_name_or_path",
        str(tmp_path / "ckpt"),
        "--trust_remote_code",
        "--dataset_name",
        str(tmp_path / "data"),
        "--output_dir",
        str(tmp_path / "out"),
        "--assistant_only_loss",
        "True",
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "1",
        "--bf16",
        "False",
        "--use_cpu",
        "--report_to",
        "none",
        f"--{training_field('activation_checkpointing')}",
        "False",
        "--disable_tqdm",
        "True",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = [float(x) for x in re.findall(r"'loss': '([0-9.]+)'", proc.stdout + proc.stderr)]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "tinylmm"
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert not torch.equal(trained.lm_head.weight, model.lm_head.weight)
