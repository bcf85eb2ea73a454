"""Offline tokenizers and processors for the processor tests: a WordLevel vocabulary of conftest.VOCAB ids
whose last two ids are <video> and <image> (the tiny configs' placeholders)."""

from __future__ import annotations

import numpy as np
from conftest import IMAGE_TOKEN, VOCAB, tiny_config
from PIL import Image
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

VIDEO_TOKEN = VOCAB - 2

# Turn tokens of each chat family (what guess_template_name looks for).
FAMILY_TOKENS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "phi3": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    "gemma": ["<start_of_turn>", "<end_of_turn>"],
    "vicuna": [],
}
WORDS = (
    "a the what is in this image picture describe shape shapes red green blue yellow circle square triangle "
    "left right top bottom yes no how many one two three it there are of and color colour video frames "
    "user assistant system model USER ASSISTANT : , . ? ! \n"
).split(" ")


def make_tokenizer(family: str = "chatml", eos_token: str = "</s>") -> PreTrainedTokenizerFast:
    """A word-level tokenizer with pad/bos/eos/unk at 0..3, the family's turn tokens, words, then <video>
    at VOCAB-2 and <image> at VOCAB-1. `eos_token` names id 2 (a Qwen2 base LLM's is <|endoftext|>)."""
    specials = ["<pad>", "<s>", eos_token, "<unk>"] + FAMILY_TOKENS[family]
    words = [w for w in dict.fromkeys(WORDS) if w not in specials]
    room = VOCAB - 2 - len(specials)
    vocab_list = specials + words[:room]
    vocab_list += [f"w{i}" for i in range(VOCAB - 2 - len(vocab_list))] + ["<video>", "<image>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    assert vocab["<image>"] == IMAGE_TOKEN and vocab["<video>"] == VIDEO_TOKEN and len(vocab) == VOCAB
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token=eos_token,
        unk_token="<unk>",
    )
    tok.add_special_tokens({"additional_special_tokens": FAMILY_TOKENS[family] + ["<video>", "<image>"]})
    return tok


def make_processor(family: str = "chatml", chat_template: str | None = None, config=None, **config_kwargs):
    from processors import TinyLMMProcessor

    config = config if config is not None else tiny_config(**config_kwargs)
    return TinyLMMProcessor.from_config(config, tokenizer=make_tokenizer(family), chat_template=chat_template)


def rgb(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A random-noise image of the given size (and PIL mode)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image if mode == "RGB" else image.convert(mode)
