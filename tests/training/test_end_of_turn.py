"""Every saved folder stops generating at the chat template's end of turn, also when the LLM's EOS is
another token (a Qwen2 base LLM: EOS <|endoftext|>, chatml turns end with <|im_end|>)."""

import json

import pytest
import torch
from _processor_fixtures import make_tokenizer, rgb
from _train_fixtures import (
    caption_rows,
    cpu_config,
    one_thread,  # noqa: F401  (autouse fixture)
    write_images,
    write_json,
)
from conftest import text_config, tiny_model, vision_config
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, pipeline

from processors import TinyLMMProcessor
from trainers.arguments import RecipeArguments
from trainers.build import build
from trainers.data import load_training_data
from trainers.demo import QUICK
from trainers.demo.pipeline import build_start
from trainers.trainer import TinyLMMTrainer

QUESTION = [{"type": "text", "text": "what color is it ?"}]


def _qwen2_style_tokenizer():
    return make_tokenizer("chatml", eos_token="<|endoftext|>")


def _stop_ids(folder) -> list[int]:
    ids = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    return ids if isinstance(ids, list) else [ids]


def _yellow_forever():
    """A tiny Qwen2-style model rigged as a bigram model: after any token but `yellow` it says `yellow`,
    after `yellow` it says <|im_end|>. Unstopped, it answers `yellow<|im_end|>yellow<|im_end|>…`."""
    tokenizer = _qwen2_style_tokenizer()
    model = tiny_model(text="qwen2")
    processor = TinyLMMProcessor.from_config(model.config, tokenizer=tokenizer, chat_template="chatml")
    yellow, end = tokenizer.convert_tokens_to_ids(["yellow", "<|im_end|>"])
    with torch.no_grad():
        for layer in model.model.language_model.layers:  # the residual stream is the token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding, head = model.get_input_embeddings().weight, model.lm_head.weight
        embedding.zero_()
        embedding[:, 0] = 1.0
        embedding[yellow] = 0.0
        embedding[yellow, 1] = 1.0
        head.zero_()
        head[yellow, 0] = 10.0
        head[end, 1] = 10.0
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id != end  # the LLM's own EOS only
    return model, processor


def _answers(folder) -> tuple[str, str]:
    """What `model.generate` (special tokens kept) and `pipeline("image-text-to-text")` answer."""
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, *QUESTION]}]
    inputs = processor.apply_chat_template(
        [chat], add_generation_prompt=True, tokenize=True, return_dict=True, images=[[rgb(40, 30)]]
    )
    inputs = {k: torch.as_tensor(v) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    generated = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    pipe = pipeline("image-text-to-text", model=str(folder))
    messages = [{"role": "user", "content": [{"type": "image", "image": rgb(40, 30)}, *QUESTION]}]
    piped = pipe(text=messages, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    return generated, piped.strip()


@pytest.mark.parametrize("use_lora", [False, True])
def test_trained_folders_and_checkpoints_stop_at_the_end_of_turn(tmp_path, use_lora):
    model, processor = _yellow_forever()
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    names = write_images(tmp_path / "images", 2)
    dataset, _ = load_training_data(write_json(tmp_path / "images" / "d.json", caption_rows(names)))
    recipe = RecipeArguments(
        recipe="t", stage="sft", train_modules=["connector"], use_lora=use_lora, lora_r=4, lora_alpha=8
    )
    # learning_rate 0: the rigged weights survive the step (LoRA starts as a no-op), so the behaviour of the
    # saved folders shows what their generation config does.
    args = cpu_config(tmp_path / "out", max_steps=1, learning_rate=0.0, save_strategy="steps", save_steps=1)
    trainer = TinyLMMTrainer(
        model, args=args, train_dataset=dataset, processing_class=processor, recipe=recipe
    )
    trainer.train()
    final = trainer.save_final()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    for folder in (checkpoint, tmp_path / "out"):
        assert end in _stop_ids(folder), folder
    generated, piped = _answers(final)
    assert generated == "yellow <|im_end|>"
    assert piped == "yellow"
    if not use_lora:  # a full checkpoint loads on its own
        assert _answers(checkpoint) == (generated, piped)


def test_build_and_demo_build_stop_at_the_end_of_turn(tmp_path):
    tokenizer = _qwen2_style_tokenizer()
    AutoModel.from_config(vision_config("clip")).save_pretrained(tmp_path / "vision")
    AutoModelForCausalLM.from_config(text_config("qwen2")).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    out = build(
        str(tmp_path / "vision"), str(tmp_path / "llm"), str(tmp_path / "build"), chat_template="chatml"
    )
    ids = _stop_ids(tmp_path / "build")
    assert set(ids) == {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}, out

    demo = tmp_path / "demo"
    build_start(demo, QUICK)
    demo_tokenizer = AutoProcessor.from_pretrained(demo).tokenizer
    assert demo_tokenizer.convert_tokens_to_ids("<|im_end|>") in _stop_ids(demo)
