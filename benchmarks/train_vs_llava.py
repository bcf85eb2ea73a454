"""Train one encoder + LLM + mlp2x_gelu model for N steps two ways, on the same synthetic samples:

  (a) tinylmm: TinyLMMForConditionalGeneration + TinyLMMProcessor + TinyLMMTrainer (our collator, recipe
      freezing, optional modality-length grouping);
  (b) the stock way: transformers' LlavaForConditionalGeneration + LlavaProcessor + plain trl.SFTTrainer with
      assistant_only_loss=True (what a user does without tinylmm).

Both start from the same weights (the tinylmm starting checkpoint is built first and copied into the Llava
model), train the connector and the LLM with the vision tower frozen, use the same chat template, schedule
and sample order, and are scored on the same held-out samples. Each runs in its own process so that peak
memory is its own. Prints samples/s, supervised tokens/s, padding, peak memory, the loss, and the ratios.

    python benchmarks/train_vs_llava.py                       # CPU, tiny shapes
    python benchmarks/train_vs_llava.py --group_by_length      # tinylmm with modality-length grouping
    python benchmarks/train_vs_llava.py --device cuda --preset real --steps 200 --bf16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRESETS = {
    # CLIP-like ViT + Llama-like LLM, small enough for a laptop CPU.
    "tiny": dict(
        vision=dict(
            model_type="clip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        text=dict(
            model_type="llama",
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        ),
    ),
    "small": dict(
        vision=dict(
            model_type="clip_vision_model",
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=8,
            num_attention_heads=8,
            image_size=224,
            patch_size=16,
        ),
        text=dict(
            model_type="llama",
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=2048,
        ),
    ),
    # SigLIP-so400m-shaped encoder + Qwen2-0.5B-shaped LLM (random weights): for a GPU.
    "real": dict(
        vision=dict(
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        ),
        text=dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1e6,
        ),
    ),
}

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 100, 240), "yellow": (235, 215, 40)}
SHAPES = ("square", "bar", "column")
WORDS = sorted(
    set(COLOURS)
    | set(SHAPES)
    | set(
        "a an the what is in this image picture describe colour shape of it there are how many one two three "
        "left right top bottom middle side and with on large small very bright dark background black . , ? "
        "answer tell me about please yes no".split()
    )
)
SPECIALS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "user",
    "assistant",
    "system",
]


# -- shared inputs (built once, in the parent) --------------------------------------------------------------


def make_tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in WORDS if w not in SPECIALS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    return tokenizer


def make_rows(n: int, image_size: int, seed: int) -> list[dict]:
    """Scenes of one coloured shape; captions and 1-3 Q&A turns of varied length; a fifth text-only."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        side = rng.choice(("left", "right", "middle"))
        if rng.random() < 0.2:
            messages = [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "what is " + " ".join(rng.choices(WORDS, k=rng.randint(3, 30))),
                        }
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 40)))}],
                },
            ]
            rows.append({"messages": messages, "images": []})
            continue
        image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
        w, h = {"square": (0.4, 0.4), "bar": (0.7, 0.2), "column": (0.2, 0.7)}[shape]
        x0 = {"left": 0.05, "middle": 0.5 - w / 2, "right": 0.95 - w}[side]
        box = [x0 * image_size, 0.2 * image_size, (x0 + w) * image_size, (0.2 + h) * image_size]
        ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
        qa = [
            ("what colour is the shape ?", f"it is {colour} ."),
            ("what shape is in this image ?", f"a {shape} ."),
            ("where is the shape ?", f"on the {side} side ."),
            (
                "describe the image .",
                f"a {colour} {shape} on the {side} side of a black background ."
                + " it is very bright ." * rng.randint(0, 6),
            ),
        ]
        rng.shuffle(qa)
        messages = []
        for t, (q, a) in enumerate(qa[: rng.randint(1, 3)]):
            content = ([{"type": "image"}] if t == 0 else []) + [{"type": "text", "text": q}]
            messages += [
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"type": "text", "text": a}]},
            ]
        rows.append({"messages": messages, "images": [image]})
    return rows


def save_dataset(rows: list[dict], path: str) -> None:
    from datasets import Dataset, Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    features = Features(
        {"messages": List({"role": Value("string"), "content": List(part)}), "images": List(Image())}
    )
    for row in rows:
        for message in row["messages"]:
            for p in message["content"]:
                p.setdefault("text", None)
    Dataset.from_list(rows, features=features).to_parquet(path)


def build_start(preset: str, folder: str, seed: int) -> str:
    """Save a random encoder and LLM as pretrained parts, then compose them the tinylmm way."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from trainers.build import build

    tokenizer = make_tokenizer()
    shapes = PRESETS[preset]
    torch.manual_seed(seed)
    vision = AutoConfig.for_model(**shapes["vision"])
    AutoModel.from_config(vision).save_pretrained(f"{folder}/vision")
    vocab = len(tokenizer)
    text = AutoConfig.for_model(
        **shapes["text"],
        vocab_size=vocab,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(text).save_pretrained(f"{folder}/llm")
    tokenizer.save_pretrained(f"{folder}/llm")
    return build(f"{folder}/vision", f"{folder}/llm", f"{folder}/start", chat_template="chatml")


# -- one run per process ------------------------------------------------------------------------------------


class CountingCollator:
    """Counts what each batch holds: samples, supervised tokens, real and padded tokens."""

    def __init__(self, inner):
        self.inner = inner
        self.counts = {"samples": 0, "supervised": 0, "tokens": 0, "padded": 0}

    def __call__(self, examples):
        batch = self.inner(examples)
        self.counts["samples"] += len(examples)
        self.counts["supervised"] += int((batch["labels"] != -100).sum())
        self.counts["tokens"] += int(batch["attention_mask"].sum())
        self.counts["padded"] += batch["attention_mask"].numel()
        return batch


def _config(opts, output_dir, **extra):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        max_steps=opts.steps,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        learning_rate=opts.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=opts.bf16,
        use_cpu=opts.device == "cpu",
        gradient_checkpointing=opts.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=opts.seed,
        max_length=None,
        **extra,
    )


def _tinylmm(opts, folder, train):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from trainers.arguments import RecipeArguments
    from trainers.collator import TinyLMMCollator
    from trainers.trainer import TinyLMMTrainer

    dtype = torch.bfloat16 if opts.bf16 and opts.device == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        f"{folder}/start", dtype=dtype, attn_implementation=opts.attn
    )
    processor = AutoProcessor.from_pretrained(f"{folder}/start")
    collator = CountingCollator(TinyLMMCollator(processor))
    trainer = TinyLMMTrainer(
        model,
        args=_config(opts, f"{folder}/out-tinylmm"),
        train_dataset=train,
        processing_class=processor,
        data_collator=collator,
        recipe=RecipeArguments(train_modules=["connector", "language_model"]),
        group_by_modality_length=opts.group_by_length,
    )
    return trainer, collator


def _llava(opts, folder, train):
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageTextToText,
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessor,
    )
    from trl import SFTTrainer

    from processors import CHAT_TEMPLATES

    start = AutoModelForImageTextToText.from_pretrained(f"{folder}/start")
    tokenizer = AutoTokenizer.from_pretrained(f"{folder}/start")
    vision = AutoConfig.from_pretrained(f"{folder}/vision")
    config = LlavaConfig(
        vision_config=vision,
        text_config=start.config.text_config,
        image_token_id=start.config.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        multimodal_projector_bias=True,
    )
    dtype = torch.bfloat16 if opts.bf16 and opts.device == "cuda" else torch.float32
    model = LlavaForConditionalGeneration(config)
    # Same weights: the full encoder from its folder, connector / LLM / head from the tinylmm start.
    model.model.vision_tower.load_state_dict(AutoModel.from_pretrained(f"{folder}/vision").state_dict())
    state = start.state_dict()
    model.model.multi_modal_projector.linear_1.load_state_dict(
        {
            k[len("model.connector.mlp.0.") :]: v
            for k, v in state.items()
            if k.startswith("model.connector.mlp.0.")
        }
    )
    model.model.multi_modal_projector.linear_2.load_state_dict(
        {
            k[len("model.connector.mlp.2.") :]: v
            for k, v in state.items()
            if k.startswith("model.connector.mlp.2.")
        }
    )
    model.model.language_model.load_state_dict(start.model.language_model.state_dict())
    model.lm_head.load_state_dict(start.lm_head.state_dict())
    model = model.to(dtype)
    if opts.attn:
        model.set_attn_implementation(opts.attn)
    for p in model.model.vision_tower.parameters():  # what a user does by hand to freeze the encoder
        p.requires_grad_(False)
    size = vision.image_size
    is_clip = vision.model_type.startswith("clip")
    image_processor = (CLIPImageProcessor if is_clip else SiglipImageProcessor)(
        size={"shortest_edge": size} if is_clip else {"height": size, "width": size},
        crop_size={"height": size, "width": size},
        do_center_crop=is_clip,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1 if is_clip else 0,
        chat_template=CHAT_TEMPLATES["chatml"],
    )
    args = _config(opts, f"{folder}/out-llava", assistant_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    collator = CountingCollator(trainer.data_collator)
    trainer.data_collator = collator
    return trainer, collator


def run_one(way: str, opts, folder: str) -> dict:
    import torch
    from datasets import load_dataset

    import trainers  # noqa: F401  (registers the tinylmm Auto classes)

    torch.set_num_threads(opts.threads)
    data = load_dataset(
        "parquet", data_files={"train": f"{folder}/train.parquet", "held_out": f"{folder}/held_out.parquet"}
    )
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer, collator = (_tinylmm if way == "tinylmm" else _llava)(opts, folder, data["train"])
    if opts.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    if opts.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counts = dict(collator.counts)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if opts.device == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 1024
    )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    held_out = trainer.evaluate(data["held_out"])["eval_loss"]
    return {
        "way": way,
        "seconds": seconds,
        "samples_per_s": counts["samples"] / seconds,
        "supervised_tokens_per_s": counts["supervised"] / seconds,
        "padding_fraction": 1 - counts["tokens"] / max(counts["padded"], 1),
        "peak_memory_mib": peak,
        "loss_last5": sum(losses[-5:]) / len(losses[-5:]),
        "held_out_loss": held_out,
    }


def _child(way, opts, folder, queue):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        queue.put(run_one(way, opts, folder))
    except BaseException as err:  # report it in the parent
        import traceback

        queue.put({"way": way, "error": f"{err!r}\n{traceback.format_exc()}"})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=0, help="training samples (default: steps x batch)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--attn", default=None, help="attention kernel for both: eager, sdpa, flash_attention_2"
    )
    parser.add_argument("--group_by_length", action="store_true", help="tinylmm: modality-length grouping")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    opts = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        image_size = PRESETS[opts.preset]["vision"]["image_size"]
        save_dataset(
            make_rows(opts.samples or opts.steps * opts.batch_size, image_size, opts.seed),
            f"{folder}/train.parquet",
        )
        save_dataset(make_rows(64, image_size, opts.seed + 1), f"{folder}/held_out.parquet")
        build_start(opts.preset, folder, opts.seed)
        results = {}
        context = multiprocessing.get_context("spawn")
        for way in ("tinylmm", "llava"):
            queue = context.Queue()
            process = context.Process(target=_child, args=(way, opts, folder, queue))
            process.start()
            results[way] = queue.get()
            process.join()
            if "error" in results[way]:
                raise SystemExit(f"{way} run failed:\n{results[way]['error']}")

    keys = (
        "samples_per_s",
        "supervised_tokens_per_s",
        "padding_fraction",
        "peak_memory_mib",
        "loss_last5",
        "held_out_loss",
    )
    print(
        f"\n{opts.steps} steps x {opts.batch_size} samples, preset {opts.preset}, device {opts.device}, "
        f"bf16 {opts.bf16}, grouping (tinylmm) {opts.group_by_length}"
    )
    print(f"{'':26}{'tinylmm':>12}{'llava+trl':>12}{'ratio':>9}")
    for key in keys:
        a, b = results["tinylmm"][key], results["llava"][key]
        ratio = a / b if b else float("nan")
        print(f"{key:26}{a:12.4g}{b:12.4g}{ratio:9.3f}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
