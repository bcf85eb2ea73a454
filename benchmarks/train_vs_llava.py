"""tinylmm against the stock way (transformers' Llava + plain TRL `SFTTrainer`), on the same samples, in one run.

  (a) tinylmm: TinyLMMForConditionalGeneration + TinyLMMProcessor + TinyLMMTrainer (chats tokenised once,
      samples packed into rows, the loss on supervised positions only, the recipe's freezing);
  (b) stock: LlavaForConditionalGeneration + LlavaProcessor + trl.SFTTrainer with assistant_only_loss=True,
      the same parts frozen by hand.

Both start from the same weights (the tinylmm starting checkpoint is built first and copied into the Llava
model), use the same chat template, schedule, samples and sample order (the same samples in every step), and
are scored on the same held-out samples after the same number of samples. Each stage runs:

  align  alignment: the connector trains (LLaVA's `plain` template: image, then a short caption);
  sft    instruction tuning: connector + LLM train (ChatML, loss on the answers).

Each way runs in a process of its own, so that its peak memory is its own. Prints, per stage, supervised
tokens/s, samples/s, padding (the share of the batch tensors that is padding), peak memory (growth of the
resident set during training on the CPU, torch's peak allocation on CUDA) and the held-out loss, and the
ratios tinylmm / stock; the model FLOP/s (see `model_flops`: the work the samples need, the same for both
ways) and, on CUDA, the MFU against `--peak_tflops`.

Data (`--mix`):
  shapes     one coloured shape per image, captions and 1-3 Q&A turns; a fifth text-only (the old default);
  llava665k  lengths modelled on LLaVA-1.5's 665K instruction mix (see LLAVA665K below); alignment samples
             modelled on LLaVA's 558K BLIP captions. Words are drawn at random from the preset's vocabulary.

Presets (`--preset`): tiny, small (CPU); qwen2-ratio: a Qwen2-0.5B-shaped LLM scaled down in width only
(24 layers, width 128, MLP width and vocabulary in Qwen2-0.5B's proportions: 151,936 x 896 -> 21,705 x 128),
so that the LM head's share of the compute is Qwen2-0.5B's (~28 % of a token's forward); real: SigLIP-so400m +
Qwen2-0.5B shapes (random weights) for a GPU.

    python benchmarks/train_vs_llava.py                                   # CPU, tiny shapes, both stages
    python benchmarks/train_vs_llava.py --mix llava665k --preset qwen2-ratio --steps 12
    python benchmarks/train_vs_llava.py --device cuda --preset real --mix llava665k --steps 50 --bf16
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

# The LLMs are Llama blocks; the Qwen2-shaped ones differ from Qwen2 only by its q/k/v biases. (transformers 5
# loads any tokenizer saved beside a Qwen2 config as Qwen2's byte-level BPE, which cannot read the word-level
# vocabulary these runs use.)
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
            max_position_embeddings=4096,
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
            max_position_embeddings=4096,
        ),
    ),
    # Qwen2-0.5B scaled down in width only: 24 layers; MLP width (4864 / 896) and vocabulary (151,936 / 896) in
    # its proportions to the width, so that the LM head costs what it costs in Qwen2-0.5B relative to the
    # blocks. A small frozen ViT gives 144 image tokens (96 px, 8 px patches).
    "qwen2-ratio": dict(
        vision=dict(
            model_type="clip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=96,
            patch_size=8,
        ),
        text=dict(
            model_type="llama",
            hidden_size=128,
            intermediate_size=695,
            num_hidden_layers=24,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        ),
        vocab_size=21705,
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
            model_type="llama",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1e6,
        ),
        vocab_size=151936,
    ),
}

# LLaVA-1.5's instruction mix (llava_v1_5_mix665k.json; Liu et al., "Improved Baselines with Visual Instruction
# Tuning", Table 7): LLaVA-Instruct 158K, ShareGPT 40K, VQAv2 83K, GQA 72K, OKVQA 9K, OCR-VQA 80K, A-OKVQA 66K,
# TextCaps 22K, RefCOCO 48K, VG 86K. Grouped by the shape of their conversations; `share` is the group's
# count out of 665K. Lengths are in words (one token each here), drawn uniformly from the ranges, which follow
# each source's format: VQA answers are a word or a phrase ("Answer the question using a single word or
# phrase."), several questions about one image are grouped into one conversation (VQAv2, GQA, OCR-VQA, the
# region descriptions of RefCOCO / VG); A-OKVQA lists its options in the question; TextCaps answers with one
# sentence; LLaVA-Instruct's conversations hold a few exchanges with answers of a few sentences, its detailed
# descriptions and complex-reasoning answers run to one or two hundred words; ShareGPT is text-only, long and
# multi-turn (cut here to --max_words, as LLaVA cuts conversations to its context length).
LLAVA665K = {
    "multi_turn_vqa": dict(share=369, turns=(2, 8), question=(6, 16), answer=(1, 4), image=True),
    "single_turn_vqa": dict(share=97, turns=(1, 1), question=(8, 40), answer=(1, 14), image=True),
    "conversation": dict(share=58, turns=(2, 5), question=(8, 25), answer=(20, 80), image=True),
    "description_reasoning": dict(share=100, turns=(1, 1), question=(8, 25), answer=(80, 220), image=True),
    "text_only_sharegpt": dict(share=40, turns=(2, 6), question=(20, 120), answer=(60, 300), image=False),
}
# LLaVA's alignment data (LCS-558K): one image and its BLIP caption, about ten words.
CAPTION_WORDS = (5, 25)

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


def vocabulary(preset: str) -> list[str]:
    """The words of the tokenizer: the shapes world's, filled up with w0, w1, ... to the preset's size."""
    words = [w for w in WORDS if w not in SPECIALS]
    size = PRESETS[preset].get("vocab_size")
    if size is not None:
        words += [f"w{i}" for i in range(size - len(SPECIALS) - len(words))]
    return words


def make_tokenizer(preset: str):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + vocabulary(preset))}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    return tokenizer


def _turn(role: str, text: str, image=None) -> dict:
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
    return {"role": role, "content": content}


def _noise(rng: random.Random, size: int):
    from PIL import Image

    return Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))


def llava665k_rows(n: int, image_size: int, words: list[str], seed: int, max_words: int) -> list[dict]:
    """Conversations with LLaVA-665K's mix of shapes (LLAVA665K), random words, noise images."""
    rng = random.Random(seed)
    kinds, weights = list(LLAVA665K), [g["share"] for g in LLAVA665K.values()]
    rows = []
    for _ in range(n):
        group = LLAVA665K[rng.choices(kinds, weights)[0]]
        image = _noise(rng, image_size) if group["image"] else None
        messages, used = [], 0
        for t in range(rng.randint(*group["turns"])):
            q, a = rng.randint(*group["question"]), rng.randint(*group["answer"])
            if t and used + q + a > max_words:
                break
            q, a = min(q, max_words // 4), min(a, max_words - max_words // 4)
            used += q + a
            messages += [
                _turn("user", " ".join(rng.choices(words, k=q)), image if t == 0 else None),
                _turn("assistant", " ".join(rng.choices(words, k=a))),
            ]
        rows.append({"messages": messages, "images": [image] if image is not None else []})
    return rows


def caption_rows(n: int, image_size: int, words: list[str], seed: int) -> list[dict]:
    """Alignment samples: an image and a short caption."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        image = _noise(rng, image_size)
        caption = " ".join(rng.choices(words, k=rng.randint(*CAPTION_WORDS)))
        messages = [_turn("user", "describe the image .", image), _turn("assistant", caption)]
        rows.append({"messages": messages, "images": [image]})
    return rows


def shapes_rows(n: int, image_size: int, seed: int, captions_only: bool = False) -> list[dict]:
    """Scenes of one coloured shape; captions and 1-3 Q&A turns of varied length; a fifth text-only."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        side = rng.choice(("left", "right", "middle"))
        if rng.random() < 0.2 and not captions_only:
            messages = [
                _turn("user", "what is " + " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))),
                _turn("assistant", " ".join(rng.choices(WORDS, k=rng.randint(2, 40)))),
            ]
            rows.append({"messages": messages, "images": []})
            continue
        image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
        w, h = {"square": (0.4, 0.4), "bar": (0.7, 0.2), "column": (0.2, 0.7)}[shape]
        x0 = {"left": 0.05, "middle": 0.5 - w / 2, "right": 0.95 - w}[side]
        box = [x0 * image_size, 0.2 * image_size, (x0 + w) * image_size, (0.2 + h) * image_size]
        ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
        caption = f"a {colour} {shape} on the {side} side of a black background ."
        if captions_only:
            messages = [_turn("user", "describe the image .", image), _turn("assistant", caption)]
            rows.append({"messages": messages, "images": [image]})
            continue
        qa = [
            ("what colour is the shape ?", f"it is {colour} ."),
            ("what shape is in this image ?", f"a {shape} ."),
            ("where is the shape ?", f"on the {side} side ."),
            ("describe the image .", caption + " it is very bright ." * rng.randint(0, 6)),
        ]
        rng.shuffle(qa)
        messages = []
        for t, (q, a) in enumerate(qa[: rng.randint(1, 3)]):
            messages += [_turn("user", q, image if t == 0 else None), _turn("assistant", a)]
        rows.append({"messages": messages, "images": [image]})
    return rows


def make_rows(opts, stage: str, n: int, seed: int) -> list[dict]:
    size = PRESETS[opts.preset]["vision"]["image_size"]
    if opts.mix == "shapes":
        return shapes_rows(n, size, seed, captions_only=stage == "align")
    words = vocabulary(opts.preset)
    if stage == "align":
        return caption_rows(n, size, words, seed)
    return llava665k_rows(n, size, words, seed, opts.max_words)


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

    tokenizer = make_tokenizer(preset)
    shapes = PRESETS[preset]
    torch.manual_seed(seed)
    vision = AutoConfig.for_model(**shapes["vision"])
    AutoModel.from_config(vision).save_pretrained(f"{folder}/vision")
    text = AutoConfig.for_model(
        **shapes["text"],
        vocab_size=len(tokenizer),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(text).save_pretrained(f"{folder}/llm")
    tokenizer.save_pretrained(f"{folder}/llm")
    return build(f"{folder}/vision", f"{folder}/llm", f"{folder}/start", chat_template="chatml")


# -- one run per process ------------------------------------------------------------------------------------


class Counts:
    """What the training batches held: samples, images, supervised (next-token) targets, real tokens, tensor
    slots. Counted in the main process as each batch reaches the trainer's step, so DataLoader workers
    (`--workers`) change nothing."""

    def __init__(self, batch_size: int):
        from trainers.collator import TOKENS_KEY

        self.batch_size, self.tokens_key = batch_size, TOKENS_KEY
        self.counts = {"samples": 0, "images": 0, "supervised": 0, "tokens": 0, "slots": 0}

    def add(self, batch) -> None:
        self.counts["samples"] += self.batch_size  # every step takes a whole batch (no sample is dropped)
        pixels = batch.get("pixel_values")
        self.counts["images"] += 0 if pixels is None else len(pixels)
        self.counts["supervised"] += int((batch["labels"][:, 1:] != -100).sum())
        real = batch[self.tokens_key] if self.tokens_key in batch else batch["attention_mask"].sum()
        self.counts["tokens"] += int(real)
        self.counts["slots"] += batch["input_ids"].numel()


def _counted(trainer, batch_size: int) -> Counts:
    """Count every batch the trainer trains on."""
    tally, step = Counts(batch_size), trainer.training_step

    def counting_step(model, inputs, *args, **kwargs):
        tally.add(inputs)
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = counting_step
    return tally


def _config(opts, output_dir, **extra):
    from trl import SFTConfig

    from trainers.arguments import training_fields

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
        **training_fields({"activation_checkpointing": opts.activation_checkpointing}),
        dataloader_num_workers=opts.workers,
        disable_tqdm=True,
        seed=opts.seed,
        max_length=opts.max_length,
        **extra,
    )


TEMPLATE = {"align": "plain", "sft": "chatml"}


def _tinylmm(opts, folder, stage, train):
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
    modules = ["connector"] if stage == "align" else ["connector", "language_model"]
    trainer = TinyLMMTrainer(
        model,
        args=_config(opts, f"{folder}/out-tinylmm-{stage}", packing=not opts.no_packing),
        train_dataset=train,
        processing_class=processor,
        data_collator=TinyLMMCollator(processor, chat_template=TEMPLATE[stage]),
        recipe=RecipeArguments(train_modules=modules),
        group_by_modality_length=opts.group_by_length,
    )
    return trainer, _counted(trainer, opts.batch_size)


def _llava(opts, folder, stage, train):
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
    for i, linear in (
        (0, model.model.multi_modal_projector.linear_1),
        (2, model.model.multi_modal_projector.linear_2),
    ):
        prefix = f"model.connector.mlp.{i}."
        linear.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    model.model.language_model.load_state_dict(start.model.language_model.state_dict())
    model.lm_head.load_state_dict(start.lm_head.state_dict())
    model = model.to(dtype)
    if opts.attn:
        model.set_attn_implementation(opts.attn)
    # What a user does by hand: the encoder frozen, and for alignment the LLM and its head too.
    frozen = [model.model.vision_tower]
    if stage == "align":
        frozen += [model.model.language_model, model.lm_head]
    for module in frozen:
        for p in module.parameters():
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
        chat_template=CHAT_TEMPLATES[TEMPLATE[stage]],
    )
    args = _config(opts, f"{folder}/out-llava-{stage}", assistant_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    return trainer, _counted(trainer, opts.batch_size)


def model_flops(model, counts: dict, stage: str) -> float:
    """The matrix-product FLOPs a stage needs for the samples it saw, whoever trains it (the MFU numerator).

    The kept encoder blocks' forward (frozen): 2 x parameters per patch, plus attention (4 x patches^2 x width
    per block); the connector, trained: 6 x parameters per image token; the LLM blocks, 2 x parameters per
    real token forward, and as much again backward for the activation gradients, and again for the weight
    gradients in SFT (so 4 x in alignment, 6 x in SFT); the LM head on supervised positions only, by the same
    rule. Padding, the logits of unsupervised positions and the LLM's attention (about 3 % at these lengths)
    are not counted: they are not work the stage needs.
    """
    from modeling_tinylmm.vision_features import block_list

    inner = model.model
    vision = inner.vision_tower.config
    patches = (vision.image_size // vision.patch_size) ** 2
    blocks = len(inner.vision_tower.get_submodule(block_list(inner.vision_tower)))
    vision_params = sum(p.numel() for p in inner.vision_tower.parameters())
    per_image = 2 * vision_params * patches + 4 * blocks * patches**2 * vision.hidden_size
    connector = sum(p.numel() for p in inner.connector.parameters())
    embed = inner.language_model.get_input_embeddings().weight.numel()
    llm = sum(p.numel() for p in inner.language_model.parameters()) - embed
    head = model.lm_head.weight.numel()
    passes = 3 if stage == "sft" else 2
    return counts["images"] * (per_image + 6 * connector * patches) + 2 * passes * (
        llm * counts["tokens"] + head * counts["supervised"]
    )


def run_one(way: str, stage: str, opts, folder: str) -> dict:
    import torch
    from datasets import load_dataset

    import trainers  # noqa: F401  (registers the tinylmm Auto classes)

    torch.set_num_threads(opts.threads)
    files = {"train": f"{folder}/{stage}-train.parquet", "held_out": f"{folder}/{stage}-held_out.parquet"}
    data = load_dataset("parquet", data_files=files)
    trainer, tally = (_tinylmm if way == "tinylmm" else _llava)(opts, folder, stage, data["train"])
    if opts.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    trainer.train()
    if opts.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counts = dict(tally.counts)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if opts.device == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss) / 1024
    )
    held_out = trainer.evaluate(data["held_out"])["eval_loss"]
    flops = model_flops(trainer.model, counts, stage) if way == "tinylmm" else None
    return {
        "model_flops": flops,
        "way": way,
        "stage": stage,
        "seconds": seconds,
        "samples": counts["samples"],
        "supervised_tokens": counts["supervised"],
        "samples_per_s": counts["samples"] / seconds,
        "supervised_tokens_per_s": counts["supervised"] / seconds,
        "padding_fraction": 1 - counts["tokens"] / max(counts["slots"], 1),
        "peak_memory_mib": peak,
        "held_out_loss": held_out,
    }


def _child(way, stage, opts, folder, queue):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # A spawned process spawns its own children too: DataLoader workers would re-import torch and
    # transformers and receive the dataset pickled (seconds each, a minute on a many-core GPU machine). Fork
    # them, as a training script started from a shell does.
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)
    try:
        queue.put(run_one(way, stage, opts, folder))
    except BaseException as err:  # report it in the parent
        import traceback

        queue.put({"way": way, "error": f"{err!r}\n{traceback.format_exc()}"})


KEYS = (
    "supervised_tokens_per_s",
    "model_tflops_per_s",
    "samples_per_s",
    "padding_fraction",
    "peak_memory_mib",
    "held_out_loss",
    "supervised_tokens",
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=("align", "sft", "both"), default="both")
    parser.add_argument("--mix", choices=("shapes", "llava665k"), default="shapes")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--held_out", type=int, default=32, help="held-out samples")
    parser.add_argument(
        "--max_words", type=int, default=700, help="llava665k: most words in one conversation"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument(
        "--attn", default=None, help="attention kernel for both: eager, sdpa, flash_attention_2"
    )
    parser.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="both: longest sample (none here is longer); tinylmm: the packed row length (default: the batch's "
        "longest sample)",
    )
    parser.add_argument("--no_packing", action="store_true", help="tinylmm: pad instead of packing")
    parser.add_argument("--group_by_length", action="store_true", help="tinylmm: modality-length grouping")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument(
        "--workers", type=int, default=0, help="both: DataLoader worker processes (dataloader_num_workers)"
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=989.0,
        help="the GPU's dense bf16 peak for MFU (default: H100 / H200 SXM, 989 TFLOP/s by NVIDIA's datasheet)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    opts = parser.parse_args(argv)

    stages = ("align", "sft") if opts.stage == "both" else (opts.stage,)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for stage in stages:
            rows = make_rows(opts, stage, opts.steps * opts.batch_size, opts.seed)
            save_dataset(rows, f"{folder}/{stage}-train.parquet")
            save_dataset(
                make_rows(opts, stage, opts.held_out, opts.seed + 1), f"{folder}/{stage}-held_out.parquet"
            )
        build_start(opts.preset, folder, opts.seed)
        context = multiprocessing.get_context("spawn")
        for stage in stages:
            results[stage] = {}
            for way in ("tinylmm", "stock"):
                queue = context.Queue()
                process = context.Process(target=_child, args=(way, stage, opts, folder, queue))
                process.start()
                results[stage][way] = queue.get()
                process.join()
                if "error" in results[stage][way]:
                    raise SystemExit(f"{way} {stage} run failed:\n{results[stage][way]['error']}")
                _write_json(opts, results)  # after every run, so that a run cut short keeps what it measured

    print(
        f"\n{opts.steps} steps x {opts.batch_size} samples, mix {opts.mix}, preset {opts.preset}, "
        f"device {opts.device}, bf16 {opts.bf16}, {opts.threads} thread(s), packing {not opts.no_packing}"
    )
    for stage in stages:
        ours, stock = results[stage]["tinylmm"], results[stage]["stock"]
        for way in (ours, stock):  # the same samples, so the same work needed: the tinylmm run's count
            way["model_tflops_per_s"] = ours["model_flops"] / way["seconds"] / 1e12
            way["mfu"] = way["model_tflops_per_s"] / opts.peak_tflops if opts.device == "cuda" else None
        print(f"\n{stage:26}{'tinylmm':>12}{'stock':>12}{'ratio':>9}")
        for key in KEYS:
            a, b = ours[key], stock[key]
            ratio = a / b if b else float("nan")
            print(f"{key:26}{a:12.4g}{b:12.4g}{ratio:9.3f}")
        if opts.device == "cuda":
            print(
                f"{'mfu (peak ' + format(opts.peak_tflops, 'g') + ' TFLOP/s)':26}{ours['mfu']:12.2%}{stock['mfu']:12.2%}"
            )
    _write_json(opts, results)
    return results


def _write_json(opts, results: dict) -> None:
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
