"""vLLM against `model.generate` on the two serving routes (run on a CUDA machine with `pip install vllm`).

1. native: a tinylmm model (SigLIP + mlp2x_gelu, pad) exported with `tinylmm convert --to llava`, served by vLLM's
   own LLaVA implementation;
2. transformers backend: a combination with no LLaVA counterpart (CLIP + resampler connector), served from its
   tinylmm folder with `model_impl="transformers"` and `trust_remote_code=True`.

Both models are built here with random weights (the machine needs no network); greedy decoding is
deterministic, so vLLM's answer tokens must equal transformers' token for token (float32 on both sides). Prints
one line per route: answers equal or not, and generated tokens/s for vLLM (batched) and `model.generate`.

    python benchmarks/vllm_serving.py --workdir /tmp/vllm-check [--prompts 64] [--max_new_tokens 32]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image


def build(folder: str, vision: str, connector: str, **options) -> None:
    from transformers import AutoConfig

    from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
    from processors import TinyLMMProcessor
    from trainers.demo.world import build_tokenizer

    tok = build_tokenizer()  # the demo world's word-level tokenizer, chat and image tokens included
    vision_config = AutoConfig.for_model(
        vision,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=224,
        patch_size=16,
    )
    text_config = AutoConfig.for_model(
        "qwen2",
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = TinyLMMConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        connector_type=connector,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        **options,
    )
    torch.manual_seed(0)
    model = TinyLMMForConditionalGeneration(config).eval()
    processor = TinyLMMProcessor.from_config(config, tokenizer=tok, chat_template="chatml")
    from trainers.checkpoint import set_generation_config

    set_generation_config(model, processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (180, 260), (224, 224), (640, 360)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 4][::-1], 3), dtype=np.uint8)) for i in range(n)]


def prompts(processor, n: int) -> list[str]:
    questions = [  # in the demo world's words, which the tokenizer knows
        "List the shapes by kind.",
        "How many shapes are there?",
        "What colour is the circle?",
        "Is there a red circle in the image?",
    ]
    return [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[i % 4]}]}],
            add_generation_prompt=True,
        )
        for i in range(n)
    ]


def with_transformers(folder: str, texts, pics, max_new_tokens: int):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    model = model.to("cuda").eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    answers, generated, start = [], 0, time.perf_counter()
    for text, image in zip(texts, pics):  # one at a time: no padding to tell apart from vLLM's batching
        inputs = processor(images=[image], text=[text], return_tensors="pt").to("cuda")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        answers.append(new)
        generated += len(new)
    torch.cuda.synchronize()
    return answers, generated / (time.perf_counter() - start)


def with_vllm(folder: str, texts, pics, max_new_tokens: int, impl: str):
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=folder,
        model_impl=impl,
        trust_remote_code=True,
        dtype="float32",
        max_model_len=2048,
        limit_mm_per_prompt={"image": 1},
        enforce_eager=True,
        gpu_memory_utilization=0.3,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    requests = [{"prompt": t, "multi_modal_data": {"image": im}} for t, im in zip(texts, pics)]
    start = time.perf_counter()
    outputs = llm.generate(requests, params)
    elapsed = time.perf_counter() - start
    answers = [list(o.outputs[0].token_ids) for o in outputs]
    del llm
    torch.cuda.empty_cache()
    return answers, sum(map(len, answers)) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="/tmp/tinylmm-vllm")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    args = parser.parse_args()
    from transformers import AutoProcessor

    from trainers.convert import convert

    native, backend = os.path.join(args.workdir, "siglip-mlp"), os.path.join(args.workdir, "clip-resampler")
    build(native, "siglip_vision_model", "mlp2x_gelu", image_aspect_ratio="pad")
    exported = convert(native, os.path.join(args.workdir, "siglip-mlp-llava"), to="llava")
    build(backend, "clip_vision_model", "resampler", connector_config={"num_queries": 64})
    pics = images(args.prompts)
    for name, folder, impl in (
        ("native (llava export)", exported, "auto"),
        ("transformers backend", backend, "transformers"),
    ):
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        texts = prompts(processor, args.prompts)
        ours, ours_speed = with_transformers(folder, texts, pics, args.max_new_tokens)
        theirs, their_speed = with_vllm(folder, texts, pics, args.max_new_tokens, impl)
        same = sum(a == b for a, b in zip(ours, theirs))
        print(
            f"{name}: {same}/{len(ours)} greedy answers equal; vLLM {their_speed:.0f} tok/s (batched), "
            f"model.generate {ours_speed:.0f} tok/s (one prompt at a time)"
        )


if __name__ == "__main__":
    main()
