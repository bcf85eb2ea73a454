"""`tinylmm demo [--out DIR]`: train a tiny multimodal model from scratch on the CPU and show that it sees.

1. a synthetic world (world.py): scenes, captions, multi-turn Q&A, POPE probes; held-out
   scenes for evaluation;
2. a word-level tokenizer for the world's language, a tiny ViT, a tiny Llama and an `mlp2x_gelu` connector,
   all randomly initialised, saved as the starting checkpoint;
3. two stages through the project's trainers, as the recipes run them: alignment on captions (`plain`
   template, loss on the caption), then multi-turn SFT (ChatML, loss on the answers);
4. the final folder re-loaded through AutoModelForImageTextToText / AutoProcessor and evaluated with the
   benchmark harness on files in the public VQAv2 and POPE formats, once more with blank images;
5. metrics.json, report.md and curves.png in the output folder, and the table printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from processors.chat_templates import IMAGE_TOKEN

from . import world

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Everything the demo's result depends on. The defaults reach the VQA, POPE, blank-image and relation
    targets on seeds 0-4 in five to six minutes on two CPU cores; `QUICK` is a seconds-long run of
    the same pipeline."""

    seed: int = 1
    # The world: 48 px images, one 16 px cell per shape, so each ViT patch sees exactly one cell.
    image_size: int = 48
    train_scenes: int = 12000
    test_scenes: int = 300
    vqa_per_scene: int = 2
    sft_turns: tuple[int, int] = (2, 4)
    caption_fraction: float = 0.2  # SFT chats that start with a description (captions mixed back in)
    # Yes / no answers learn slowest (no single image feature predicts them): ask them more often.
    question_weights: dict = field(default_factory=lambda: {"existence": 2.0, "relation": 2.0})
    suffix_every_turn: bool = False  # the short-answer instruction on each chat's first question only
    # Relation answers are written out (world.relation_answer): the relation, each object's column or row, then
    # the yes / no. With a bare yes / no, relations stay at chance on every seed. Written out, the last step,
    # comparing two words, is one token of each relation answer: asked no more often than the plain kinds,
    # seed 0 still left it at chance; hence relation's weight of 2 above.
    explain_relations: bool = True
    # The model.
    vision_hidden: int = 64
    # The ViT's learned position embeddings start at the scale of its patch embeddings. At CLIP's default
    # (std 0.02, ~40x smaller than a patch's embedding here) they never grow: a trained model's image tokens
    # encode colour and shape (a linear probe reads them perfectly) but not the cell (a probe reads row and
    # column at chance), and the LLM has to work the cell out from the tokens' order. Where-questions then
    # depend on the seed, and relations, which compare two such derived positions, are out of reach.
    vision_position_std: float | None = 0.5
    vision_layers: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    # 8 heads of 16 dims rather than 4 of 32: more heads that can lock onto the right image token early.
    heads: int = 8
    # LLM weight init std: at the usual 0.02 the attention from a question to one of the 9 image tokens
    # stays near uniform for well over 1500 steps; at 0.1 it locks on within ~1000.
    text_init_std: float = 0.1
    # Training: everything trains in both stages (every part starts from random weights).
    batch_size: int = 32
    align_steps: int = 1000
    align_lr: float = 1e-3
    # 2,200 steps left seed 0 at 78 % VQA; 2,800 reach 80 % on seeds 0-4.
    sft_steps: int = 2800
    sft_lr: float = 1e-3
    warmup_ratio: float = 0.03
    # Each batch's samples packed into rows of at most `max_length` tokens (no padding between samples).
    packing: bool = True
    max_length: int | None = None  # rows as long as each batch's longest sample: no attention cost added
    dataloader_workers: int = 0
    logging_steps: int = 25
    eval_batch_size: int = 64
    # A smoke run (`--quick`) checks that the pipeline runs end to end; its scores mean nothing, and its
    # report says so.
    smoke: bool = False


QUICK = DemoSettings(
    train_scenes=96,
    test_scenes=12,
    vqa_per_scene=1,
    vision_hidden=32,
    text_hidden=32,
    heads=4,
    batch_size=8,
    align_steps=3,
    sft_steps=3,
    logging_steps=1,
    eval_batch_size=16,
    smoke=True,
)

VQA_IMAGE_PATTERN = "scene_{image_id:05d}.png"


# -- 1. the world, written as training and benchmark files ------------------------------------------------


def _llava_conversation(messages: list[dict]) -> list[dict]:
    turns = []
    for m in messages:
        text = "".join(f"{IMAGE_TOKEN}\n" if p["type"] == "image" else p["text"] for p in m["content"])
        turns.append({"from": "human" if m["role"] == "user" else "gpt", "value": text})
    return turns


def write_world(folder: Path, s: DemoSettings) -> dict:
    """Training files (LLaVA JSON, images as PNG) and held-out benchmark files (VQAv2, POPE JSONL)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    train = world.generate_scenes(s.train_scenes, s.seed, held_out=False)
    test = world.generate_scenes(s.test_scenes, s.seed, held_out=True)
    for i, scene in enumerate(train):
        world.render(scene, s.image_size).save(images / f"train_{i:05d}.png")
    for i, scene in enumerate(test):
        world.render(scene, s.image_size).save(images / VQA_IMAGE_PATTERN.format(image_id=i))

    align = [
        {"image": f"images/train_{i:05d}.png", "conversations": _llava_conversation(row["messages"])}
        for i, row in enumerate(world.caption_rows(train, s.seed, s.image_size, render_images=False))
    ]
    sft_rows = world.qa_rows(
        train,
        s.seed,
        s.image_size,
        turns=s.sft_turns,
        caption_fraction=s.caption_fraction,
        weights=s.question_weights,
        suffix_every_turn=s.suffix_every_turn,
        render_images=False,
        explain_relations=s.explain_relations,
    )
    sft = [
        {"image": f"images/train_{i:05d}.png", "conversations": _llava_conversation(row["messages"])}
        for i, row in enumerate(sft_rows)
    ]
    (folder / "align.json").write_text(json.dumps(align))
    (folder / "sft.json").write_text(json.dumps(sft))

    # VQAv2's two files merged in one object; `category` (the question type) is an extra field.
    vqa = world.vqa_items(test, s.seed, per_scene=s.vqa_per_scene, explain_relations=s.explain_relations)
    questions, annotations = [], []
    for qid, item in enumerate(vqa):
        questions.append({"question_id": qid, "image_id": item["scene"], "question": item["question"]})
        annotations.append(
            {
                "question_id": qid,
                "image_id": item["scene"],
                "category": item["type"],
                "multiple_choice_answer": item["answer"],
                "answers": [{"answer": item["answer"], "answer_id": k + 1} for k in range(10)],
            }
        )
    (folder / "vqa.json").write_text(json.dumps({"questions": questions, "annotations": annotations}))
    with open(folder / "pope.jsonl", "w") as f:
        for qid, item in enumerate(world.pope_items(test, train, s.seed)):
            image = f"images/{VQA_IMAGE_PATTERN.format(image_id=item['scene'])}"
            row = {"question_id": qid, "image": image, "text": item["question"], "label": item["label"]}
            f.write(json.dumps({**row, "category": item["split"]}) + "\n")
    return {"train_scenes": len(train), "test_scenes": len(test), "vqa_questions": len(vqa)}


# -- 2. the starting checkpoint --------------------------------------------------------------------------


def text_config(s: DemoSettings, tokenizer):
    """The demo's LLM: a small Llama over the world's word-level tokenizer."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=2 * s.text_hidden,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=s.text_init_std,
    )


def build_start(folder: Path, s: DemoSettings) -> str:
    """Tokenizer, random-weight model and processor, saved as a `build` stage folder."""
    from transformers import AutoConfig

    from modeling_tinylmm import TinyLMMConfig, TinyLMMForConditionalGeneration
    from processors import TinyLMMProcessor

    from ..checkpoint import set_generation_config
    from ..model_card import write_model_card
    from ..stages import write_stage

    if s.image_size % 3:
        raise ValueError(
            f"image_size must be a multiple of 3 (one ViT patch per grid cell), got {s.image_size}."
        )
    tokenizer = world.build_tokenizer()
    vision = AutoConfig.for_model(
        "clip_vision_model",
        hidden_size=s.vision_hidden,
        intermediate_size=2 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.heads,
        image_size=s.image_size,
        patch_size=s.image_size // 3,
    )
    text = text_config(s, tokenizer)
    config = TinyLMMConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        connector_type="mlp2x_gelu",
        image_token_id=tokenizer.image_token_id,
        vision_feature_layer=-1,  # a shallow tower: its last block is the feature
    )
    torch.manual_seed(s.seed)
    model = TinyLMMForConditionalGeneration(config)
    if s.vision_position_std is not None:
        embeddings = model.model.vision_tower.embeddings
        torch.nn.init.normal_(embeddings.position_embedding.weight, std=s.vision_position_std)
    processor = TinyLMMProcessor.from_config(config, tokenizer=tokenizer, chat_template="chatml")
    set_generation_config(model, processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_stage(folder, {"stage_id": "build", "demo": asdict(s)})
    write_model_card(folder, model, processor)
    return str(folder)


# -- 3. training through the trainers --------------------------------------------------------------------


def train_stage(
    name: str,
    start: str,
    data: Path,
    out: Path,
    template: str,
    steps: int,
    lr: float,
    s: DemoSettings,
    init: str,
):
    """One recipe stage through trainers.train.train; returns the trainer (its log holds the losses)."""
    from trl import SFTConfig

    from ..arguments import DataArguments, ModelArguments, RecipeArguments, training_fields
    from ..train import train

    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=s.warmup_ratio,
        weight_decay=0.0,
        max_grad_norm=1.0,
        # TRL's defaults turn on bf16 autocast and activation checkpointing; on a CPU, for a model this small,
        # both only cost time.
        bf16=False,
        **training_fields({"activation_checkpointing": False}),
        logging_steps=s.logging_steps,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=s.dataloader_workers,
        use_cpu=not torch.cuda.is_available(),
        seed=s.seed,
        max_length=s.max_length,
        packing=s.packing,
        disable_tqdm=False,
    )
    recipe = RecipeArguments(recipe="demo", stage=name, init_stage=init, train_modules=["all"])
    return train(
        ModelArguments(model_name_or_path=start),
        DataArguments(data_path=str(data), chat_template=template),
        recipe,
        args,
    )


def _losses(trainer) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


# -- 5. report -------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(metrics: dict) -> str:
    vqa, blind = metrics["vqa_exact_match"], metrics["blind_vqa_exact_match"]
    lines = ["| question type | n | exact match | blank image |", "|---|---:|---:|---:|"]
    for qtype, value in vqa["per_type"].items():
        lines.append(
            f"| {qtype} | {vqa['counts'][qtype]} | {_pct(value)} | {_pct(blind['per_type'][qtype])} |"
        )
    lines.append(
        f"| **overall** | {sum(vqa['counts'].values())} | **{_pct(vqa['overall'])}** | {_pct(blind['overall'])} |"
    )
    verdicts = metrics["relation_verdict"]
    lines.append(
        f"| relation: the closing yes / no | {vqa['counts'].get('relation', 0)} | {_pct(verdicts['image'])} "
        f"| {_pct(verdicts['blank'])} |"
    )
    lines += [
        "",
        "| POPE split | accuracy | precision | recall | F1 | yes ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split, m in metrics["pope"].items():
        cells = " | ".join(_pct(m[k]) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
        lines.append(f"| {split} | {cells} |")
    return "\n".join(lines)


def plot(path: Path, curves: dict[str, list[tuple[int, float]]], metrics: dict) -> None:
    import matplotlib.pyplot as plt

    fig = figure(curves, metrics)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(curves: dict[str, list[tuple[int, float]]], metrics: dict):
    """The report's figure: the training loss of both stages, and held-out VQA by question type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for stage, points in curves.items():
        if points:
            left.plot([offset + s for s, _ in points], [v for _, v in points], label=stage)
            offset += points[-1][0]
    losses = [v for points in curves.values() for _, v in points]
    # A log axis only where the loss spans a decade or more, ticked at 1, 2, 5 × 10^k in plain numbers
    # (0.05, 0.1 … 5), never 4.6×10⁰.
    if losses and min(losses) > 0 and max(losses) / min(losses) >= 10:
        left.set_yscale("log")
        left.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        left.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        left.yaxis.set_minor_formatter(ticker.NullFormatter())
    left.set(xlabel="step", ylabel="training loss", title="loss (align, then SFT)")
    left.legend()
    types = list(metrics["vqa_exact_match"]["per_type"])
    x = range(len(types))
    real = [100 * metrics["vqa_exact_match"]["per_type"][t] for t in types]
    blind = [100 * metrics["blind_vqa_exact_match"]["per_type"][t] for t in types]
    for offset, values, label in ((-0.2, real, "image"), (0.2, blind, "blank image")):
        bars = right.bar([i + offset for i in x], values, width=0.4, label=label, edgecolor="black")
        right.bar_label(bars, fmt="%.0f", fontsize=8)  # a score of 0 still shows as a bar with its value
    right.set_xticks(list(x), types, rotation=30)
    # Headroom above 100 % for the value labels and the legend.
    right.set(
        ylabel="exact match (%)",
        ylim=(0, 125),
        yticks=range(0, 101, 20),
        title="held-out VQA by question type",
    )
    right.legend(loc="upper center", ncols=2)
    fig.tight_layout()
    return fig


def write_report(out: Path, metrics: dict, settings: DemoSettings) -> None:
    m = metrics
    smoke = (
        f"""
> **Smoke run** (`--quick`): {settings.align_steps} + {settings.sft_steps} training steps on \
{settings.train_scenes} scenes. It checks that the pipeline runs end to end; the scores below say nothing \
about what the model learns. `tinylmm demo` without `--quick` trains for real (five to six minutes on two \
CPU cores).
"""
        if settings.smoke
        else ""
    )
    prompt = m.get("prompt") or {}
    prompt_line = (
        f"Prompt: each question, a new line, then the suffix {prompt['suffix']!r}; chat template "
        f"{prompt['chat_template']}."
        if prompt.get("suffix")
        else ""
    )
    text = f"""# tinylmm demo
{smoke}
A {m["model"]["parameters"] / 1e6:.2f} M-parameter multimodal model (CLIP-style ViT, `mlp2x_gelu`, Llama),
randomly initialised, trained on the CPU through tinylmm's trainers (alignment on captions, then
multi-turn SFT), re-loaded with `AutoModelForImageTextToText`, evaluated on held-out scenes.

Wall time: **{m["wall_seconds"]:.0f} s** on {m["machine"]["cpu_count"]} CPU core(s) ({m["machine"]["platform"]},
torch {m["machine"]["torch"]}, {m["machine"]["threads"]} threads).

{tables(m)}

{prompt_line}

Blank image: the same questions with every image replaced by a constant grey one; the gap to the real score
is what the model gets from seeing. A relation answer says where both objects are before its yes / no; its
exact match needs all of it, the closing yes / no row scores the yes / no alone (a yes / no prior gets 50 %).

Stages (seconds): {", ".join(f"{k} {v:.0f}" for k, v in m["stage_seconds"].items())}.
Final training loss: align {m["final_loss"]["align"]:.3f}, SFT {m["final_loss"]["sft"]:.3f}.

![curves](curves.png)

Settings:

```json
{json.dumps(asdict(settings), indent=2)}
```
"""
    (out / "report.md").write_text(text)


# -- the pipeline ----------------------------------------------------------------------------------------


def _per_category(result: dict, key: str) -> dict[str, float]:
    return {cat: m[key] for cat, m in result["per_category"].items()}


def relation_verdicts(result: dict) -> float:
    """The share of relation questions whose closing yes / no is right, whatever the answer says before it
    (exact match asks for both cells too: a blank image scores ~0 there, so only the verdict compares)."""
    pairs = [
        (world.verdict(p["prediction"]), world.verdict(p["reference"]))
        for p in result["predictions"]
        if p["category"] == "relation"
    ]
    return sum(got == want for got, want in pairs) / max(1, len(pairs))


def run_demo(out: str | os.PathLike, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Run the whole demo into `out`; returns the metrics (also written to out/metrics.json)."""
    with _library_bars_off():
        return _run_demo(Path(out), settings or DemoSettings(), progress)


@contextlib.contextmanager
def _library_bars_off():
    """Without transformers' and datasets' own short bars (loading weights, writing shards, reading a file):
    the demo's log keeps one bar at a time."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_on, ds_on = hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hf_on:
            hf_logging.enable_progress_bar()
        if ds_on:
            datasets.enable_progress_bars()


def _run_demo(out: Path, s: DemoSettings, progress: bool) -> dict:
    from .. import evaluation
    from ..model_card import record_evaluation

    out.mkdir(parents=True, exist_ok=True)
    random.seed(s.seed)
    start = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    steps = ["world", "build", "align", "sft", "reload", "evaluate", "report"]

    def begin(name: str) -> None:
        # One line per step, not a bar around the training and evaluation bars: nested bars garble a log.
        if progress:
            tqdm.write(f"demo [{steps.index(name) + 1}/{len(steps)}] {name}")

    def mark(name: str, t0: float) -> float:
        stage_seconds[name] = time.perf_counter() - t0
        return time.perf_counter()

    t = time.perf_counter()
    begin("world")
    data = out / "data"
    sizes = write_world(data, s)
    t = mark("world", t)

    begin("build")
    build = build_start(out / "build", s)
    t = mark("build", t)

    begin("align")
    align = train_stage(
        "align", build, data / "align.json", out / "align", "plain", s.align_steps, s.align_lr, s, "build"
    )
    t = mark("align", t)

    begin("sft")
    sft = train_stage(
        "sft",
        str(out / "align"),
        data / "sft.json",
        out / "sft",
        "chatml",
        s.sft_steps,
        s.sft_lr,
        s,
        "demo/align",
    )
    t = mark("sft", t)

    begin("reload")
    model, processor = evaluation.load_model(out / "sft", device="cpu")
    t = mark("reload", t)

    begin("evaluate")
    common = dict(batch_size=s.eval_batch_size, progress=progress)
    vqa_samples = evaluation.load_benchmark(
        "vqa", str(data / "vqa.json"), image_pattern=f"images/{VQA_IMAGE_PATTERN}"
    )
    vqa = evaluation.evaluate_model((model, processor), "vqa", vqa_samples, **common)
    blind = evaluation.evaluate_model((model, processor), "vqa", vqa_samples, blank_images=True, **common)
    pope = evaluation.evaluate_model((model, processor), "pope", str(data / "pope.jsonl"), **common)
    for result, file in ((vqa, "vqa.json"), (blind, "vqa.json"), (pope, "pope.jsonl")):
        record_evaluation(out / "sft", {**result, "data": str(data / file)}, model, processor)
    t = mark("evaluate", t)
    begin("report")

    counts = {cat: m["n"] for cat, m in vqa["per_category"].items()}
    metrics = {
        "vqa_exact_match": {
            "overall": vqa["overall"]["exact_match"],
            "per_type": _per_category(vqa, "exact_match"),
            "counts": counts,
        },
        "blind_vqa_exact_match": {
            "overall": blind["overall"]["exact_match"],
            "per_type": _per_category(blind, "exact_match"),
        },
        "relation_verdict": {"image": relation_verdicts(vqa), "blank": relation_verdicts(blind)},
        "pope": {
            split: {k: r[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
            for split, r in pope["per_category"].items()
        },
        "final_loss": {"align": _losses(align)[-1][1], "sft": _losses(sft)[-1][1]},
        "data": sizes,
        "model": {"parameters": sum(p.numel() for p in model.parameters())},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "settings": asdict(s),
        "prompt": vqa["prompt"],
    }
    (out / "predictions.json").write_text(
        json.dumps(
            {
                "prompt": {"vqa": vqa["prompt"], "pope": pope["prompt"]},
                "vqa": vqa["predictions"],
                "blind_vqa": blind["predictions"],
                "pope": pope["predictions"],
            }
        )
    )
    plot(out / "curves.png", {"align": _losses(align), "sft": _losses(sft)}, metrics)
    stage_seconds["report"] = time.perf_counter() - t
    metrics["stage_seconds"] = stage_seconds
    metrics["wall_seconds"] = time.perf_counter() - start
    write_report(out, metrics, s)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# -- the CLI subcommand ----------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a tiny multimodal model from scratch on the CPU, then evaluate it (minutes)",
        description="Train a tiny multimodal model from scratch on an embedded synthetic world, on the CPU, "
        "then evaluate it on held-out scenes. Needs no network.",
        epilog="examples:\n  tinylmm demo --out demo_out\n  tinylmm demo --out demo_out --seed 3 --threads 2\n"
        "  tinylmm demo --out /tmp/smoke --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="tinylmm-demo", help="output folder (default: tinylmm-demo)")
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long run of the same pipeline (for tests)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the world and the model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    settings = QUICK if args.quick else DemoSettings()
    if args.seed is not None:
        settings = replace(settings, seed=args.seed)
    metrics = run_demo(args.out, settings)
    print(tables(metrics))
    print(f"\nwall time {metrics['wall_seconds']:.0f} s; report: {Path(args.out) / 'report.md'}")
    if settings.smoke:
        print("This was a smoke run (--quick): the scores mean nothing; drop --quick to train for real.")
    print(f"Talk to the model: tinylmm chat --model {shlex.quote(str(Path(args.out) / 'sft'))}")
    return 0
