"""`tinylmm eval --model DIR --task {pope,vqa,mc,caption} --data FILE`: read a benchmark file, generate
answers, score them."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..arguments import add_kebab_aliases
from ..model_card import chat_template_name, record_evaluation
from .benchmarks import (
    COCO_IMAGE_PATTERN,
    MAX_NEW_TOKENS,
    PROMPT_SUFFIXES,
    TASKS,
    BenchmarkError,
    Sample,
    load_benchmark,
)
from .generation import PROMPT_FORMAT, check_positive, generate_answers, load_model
from .scoring import format_table, score


def evaluate_model(
    model,
    task: str,
    data: str | list[Sample],
    images: str | None = None,
    annotations: str | None = None,
    batch_size: int = 16,
    prompt_suffix: str | None = None,
    max_new_tokens: int | None = None,
    blank_images: bool = False,
    progress: bool = True,
    image_pattern: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (a checkpoint folder, or a (model, processor) pair) on a benchmark file or a list
    of samples. Returns {"task", "overall", "per_category", "predictions"}; metric values are fractions."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")
    check_positive(batch_size=batch_size)
    if max_new_tokens is not None:
        check_positive(max_new_tokens=max_new_tokens)
    samples = (
        load_benchmark(task, data, images, annotations, image_pattern=image_pattern)
        if isinstance(data, (str, os.PathLike))
        else data
    )
    if not samples:
        raise BenchmarkError(f"{data}: no samples.")
    model, processor = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    prompt_suffix = PROMPT_SUFFIXES[task] if prompt_suffix is None else prompt_suffix
    predictions = generate_answers(
        model,
        processor,
        samples,
        prompt_suffix=prompt_suffix,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[task],
        blank_images=blank_images,
        progress=progress,
        desc=f"{task}{' (blank images)' if blank_images else ''}",
    )
    result = {
        "task": task,
        "prompt": prompt_record(processor, prompt_suffix),
        **score(task, samples, predictions),
    }
    if blank_images:
        result["blank_images"] = True
    result["predictions"] = [
        {"id": s.id, "category": s.category, "prediction": p, "reference": s.references[0]}
        for s, p in zip(samples, predictions)
    ]
    return result


def prompt_record(processor, suffix: str) -> dict[str, str]:
    """How each question was put to the model: the user text's format, the suffix, the chat template."""
    return {
        "format": PROMPT_FORMAT if suffix else "{question}",
        "suffix": suffix,
        "chat_template": chat_template_name(getattr(processor, "chat_template", None)),
    }


def prompt_note(result: dict[str, Any]) -> str:
    """The line under a results table that says how the questions were asked."""
    prompt = result["prompt"]
    if not prompt["suffix"]:
        return f"Prompt: the question alone, no suffix; chat template {prompt['chat_template']}."
    return (
        f"Prompt: the question, a new line, then the suffix {prompt['suffix']!r}; chat template "
        f'{prompt["chat_template"]}. --prompt_suffix changes the suffix ("" for none).'
    )


# -- the CLI subcommand ----------------------------------------------------------------------------------


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {number}")
    return number


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a benchmark file (POPE, VQAv2, MC, captions)",
        description="Greedy answers from a checkpoint on a benchmark file in its public format, scored per "
        "category. The file formats are described in trainers/evaluation/benchmarks.py.",
        epilog="examples:\n"
        "  tinylmm eval --model out/sft --task pope --data pope.jsonl --images coco/val2014\n"
        "  tinylmm eval --model out/sft --task vqa --data vqa.json --image_pattern 'images/{image_id}.png'\n"
        "  tinylmm eval --model out/sft --task mc --data mmbench.jsonl --batch_size 32 --output scores.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", required=True, help="benchmark file (JSON / JSONL)")
    parser.add_argument(
        "--images", default=None, help="folder of the images (default: the data file's folder)"
    )
    parser.add_argument(
        "--annotations", default=None, help="VQAv2 annotations file, when --data holds questions"
    )
    parser.add_argument(
        "--image_pattern",
        default=None,
        help=f"vqa: file name of an image from its image_id (default: COCO's, {COCO_IMAGE_PATTERN})",
    )
    parser.add_argument("--batch_size", type=_positive_int, default=16, help="prompts per generate call")
    parser.add_argument("--max_new_tokens", type=_positive_int, default=None, help="default: the task's")
    parser.add_argument(
        "--prompt_suffix", default=None, help="text after each question (default: the paper's)"
    )
    parser.add_argument("--blank_images", action="store_true", help="replace every image by a grey one")
    parser.add_argument(
        "--output", default=None, help="write the results (with predictions) to this JSON file"
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="load the model with its own code")
    add_kebab_aliases(parser)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    result = evaluate_model(
        model,
        args.task,
        args.data,
        images=args.images,
        annotations=args.annotations,
        image_pattern=args.image_pattern,
        batch_size=args.batch_size,
        prompt_suffix=args.prompt_suffix,
        max_new_tokens=args.max_new_tokens,
        blank_images=args.blank_images,
    )
    result = {"model": str(args.model), "data": str(args.data), **result}
    print(format_table(result))
    print(f"\n{prompt_note(result)}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    _record_in_folder(args.model, result, *model)
    return 0


def _record_in_folder(folder: str, result: dict[str, Any], model, processor) -> None:
    """Add the scores to a tinylmm folder's records and model card (skipped, with a notice, where the folder
    cannot be written)."""
    if getattr(model.config, "model_type", None) != "tinylmm":
        return
    try:
        record_evaluation(folder, result, model, processor)
    except OSError as err:
        print(f"(scores not recorded in {folder}: {err.strerror or err})")
        return
    print(f"Recorded in {Path(folder) / 'README.md'} (its model card).")
