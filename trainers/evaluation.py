"""Benchmark evaluation: greedy answers from a tinylmm checkpoint, scored by the metrics in trainers/metrics.

`tinylmm eval --model DIR --task {pope,vqa,mc,caption} --data FILE [--images DIR] [--batch-size N]`

Benchmark files in their public formats:
- pope: JSONL, one probe a line: `question` (or POPE's `text`), `label` (yes / no), `image`, and optionally
  `category` (the split: random, popular, adversarial), `question_id`.
- vqa: VQAv2, either a JSON object holding `questions` and `annotations` (the two official files merged),
  the questions file with `--annotations FILE`, or JSONL rows with `question`, `answers` (strings or
  {"answer": ...}), `image` or `image_id`, and optionally `category` / `answer_type`. Images named by
  `image_id` follow `--image-pattern` (COCO's by default).
- mc: JSONL (ScienceQA / MMBench style): `question`, the options as `options` / `choices` (a list) or
  MMBench's columns A, B, C …, `answer` (a letter or an option index), optionally `hint`, `image`,
  `category`.
- caption: JSONL: `image`, `captions` (a list) or `caption`, optionally `prompt`, `category`.

Relative image paths are resolved against `--images`, else against the data file's folder. Answers come
from batched greedy decoding (left padding, KV cache); the prompt suffixes are the ones the LLaVA family
of papers use.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

TASKS = ("pope", "vqa", "mc", "caption")
SHORT_ANSWER = "Answer the question using a single word or phrase."
PROMPT_SUFFIXES = {
    "pope": SHORT_ANSWER,
    "vqa": SHORT_ANSWER,
    "mc": "Answer with the option's letter from the given choices directly.",
    "caption": "",
}
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
MAX_NEW_TOKENS = {"pope": 16, "vqa": 16, "mc": 16, "caption": 64}
COCO_IMAGE_PATTERN = "COCO_val2014_{image_id:012d}.jpg"
METRICS_DIR = Path(__file__).resolve().parent / "metrics"
# End-of-turn tokens of the chat templates: generation stops at any of them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
BLANK_GREY = (128, 128, 128)


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read; the message names the file and the line."""


@dataclass
class Sample:
    """One benchmark question, whatever the task."""

    id: Any
    prompt: str  # the user's text, before the task's suffix
    references: list[str]  # POPE: [label]; VQA: the human answers; MC: [letter]; caption: the captions
    image: str | Image.Image | None = None
    category: str = "all"
    choices: list[str] | None = None
    extra: dict = field(default_factory=dict)


# -- reading benchmark files -----------------------------------------------------------------------------


def _read(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """(where, record) pairs: `line N` for JSONL, `entry N` for a JSON list; a JSON object is one record."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark file not found: {path}")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            out = []
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    out.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise BenchmarkError(f"{path}, line {n}: not valid JSON ({err.msg}).") from None
            return out
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise BenchmarkError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    if isinstance(data, list):
        return [(f"entry {n}", row) for n, row in enumerate(data)]
    return [("the top level", data)]


def _field(row: Any, keys: tuple[str, ...], path: str, where: str):
    if not isinstance(row, dict):
        raise BenchmarkError(f"{path}, {where}: expected a JSON object, got {type(row).__name__}.")
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    names = " or ".join(repr(k) for k in keys)
    raise BenchmarkError(f"{path}, {where}: missing field {names} (fields present: {sorted(row)}).")


def _image_path(value: Any, images: str | None, path: str, where: str) -> str:
    folder = images if images is not None else os.path.dirname(os.path.abspath(path))
    full = value if os.path.isabs(str(value)) else os.path.join(folder, str(value))
    if not os.path.isfile(full):
        raise FileNotFoundError(f"{path}, {where}: image not found: {full}")
    return full


def load_pope(path: str, images: str | None = None) -> list[Sample]:
    samples = []
    for where, row in _read(path):
        question = _field(row, ("question", "text"), path, where)
        label = str(_field(row, ("label", "answer"), path, where)).strip().lower()
        if label not in ("yes", "no"):
            raise BenchmarkError(f'{path}, {where}: label must be "yes" or "no", got {label!r}.')
        image = _image_path(_field(row, ("image",), path, where), images, path, where)
        sid = row.get("question_id", len(samples))
        samples.append(Sample(sid, question, [label], image, str(row.get("category", "all"))))
    return samples


def _answers(value: Any, path: str, where: str) -> list[str]:
    answers = value if isinstance(value, list) else [value]
    out = [a["answer"] if isinstance(a, dict) else a for a in answers]
    if not out or not all(isinstance(a, str) for a in out):
        raise BenchmarkError(
            f"{path}, {where}: 'answers' must be a non-empty list of strings or {{'answer': …}}."
        )
    return out


def load_vqa(
    path: str,
    images: str | None = None,
    annotations: str | None = None,
    image_pattern: str = COCO_IMAGE_PATTERN,
) -> list[Sample]:
    rows = _read(path)
    if len(rows) == 1 and rows[0][0] == "the top level":  # the official two-file layout
        top = rows[0][1]
        questions = _field(top, ("questions",), path, "the top level")
        if annotations is not None:
            ann_rows = _read(annotations)
            ann_top = ann_rows[0][1] if len(ann_rows) == 1 else {}
            ann_list = _field(ann_top, ("annotations",), annotations, "the top level")
            ann_path = annotations
        elif isinstance(top, dict) and "annotations" in top:
            ann_list, ann_path = top["annotations"], path
        else:
            raise BenchmarkError(
                f"{path}: VQAv2 questions without answers: missing field 'annotations'; pass the annotations "
                "file with --annotations, or merge both files' lists into one object."
            )
        by_id = {}
        for n, ann in enumerate(ann_list):
            by_id[_field(ann, ("question_id",), ann_path, f"annotation {n}")] = (n, ann)
        rows = []
        for n, q in enumerate(questions):
            qid = _field(q, ("question_id",), path, f"question {n}")
            if qid not in by_id:
                raise BenchmarkError(f"{ann_path}: no annotation for question {n} (question_id {qid}).")
            rows.append((f"question {n}", {**by_id[qid][1], **q}))
    samples = []
    for where, row in rows:
        question = _field(row, ("question",), path, where)
        answers = _answers(_field(row, ("answers", "answer"), path, where), path, where)
        image = row.get("image")
        if image is None:
            image_id = _field(row, ("image", "image_id"), path, where)
            image = image_pattern.format(image_id=int(image_id))
        image = _image_path(image, images, path, where)
        category = row.get("category", row.get("answer_type", "all"))
        majority = row.get("multiple_choice_answer") or Counter(answers).most_common(1)[0][0]
        sid = row.get("question_id", len(samples))
        samples.append(Sample(sid, question, answers, image, str(category), extra={"majority": majority}))
    return samples


_LETTERS = "ABCDEFGHIJ"


def load_mc(path: str, images: str | None = None) -> list[Sample]:
    samples = []
    for where, row in _read(path):
        question = _field(row, ("question",), path, where)
        choices = row.get("options", row.get("choices"))
        if choices is None:  # MMBench's columns
            choices = [row[k] for k in _LETTERS if isinstance(row, dict) and row.get(k) not in (None, "")]
        if not isinstance(choices, list) or len(choices) < 2:
            raise BenchmarkError(
                f"{path}, {where}: missing field 'options' / 'choices' (a list) or MMBench columns A, B, …"
            )
        answer = _field(row, ("answer",), path, where)
        letter = _LETTERS[answer] if isinstance(answer, int) else str(answer).strip().upper()
        if letter not in _LETTERS[: len(choices)]:
            raise BenchmarkError(
                f"{path}, {where}: answer {answer!r} is not one of the {len(choices)} options."
            )
        hint = row.get("hint") or row.get("context")
        options = "\n".join(f"{_LETTERS[i]}. {c}" for i, c in enumerate(choices))
        prompt = f"{hint}\n" if hint else ""
        prompt += f"{question}\n{options}"
        image = row.get("image")
        if image:
            image = _image_path(image, images, path, where)
        sid = row.get("question_id", row.get("id", len(samples)))
        samples.append(Sample(sid, prompt, [letter], image or None, str(row.get("category", "all")), choices))
    return samples


def load_captions(path: str, images: str | None = None) -> list[Sample]:
    samples = []
    for where, row in _read(path):
        captions = _field(row, ("captions", "caption"), path, where)
        captions = captions if isinstance(captions, list) else [captions]
        image = _image_path(_field(row, ("image",), path, where), images, path, where)
        prompt = row.get("prompt", CAPTION_PROMPT)
        sid = row.get("id", row.get("image_id", len(samples)))
        samples.append(
            Sample(sid, prompt, [str(c) for c in captions], image, str(row.get("category", "all")))
        )
    return samples


def load_benchmark(
    task: str, path: str, images: str | None = None, annotations: str | None = None, **kwargs
) -> list[Sample]:
    """Read a benchmark file of `task`; clear errors name the file and line of a bad record."""
    if task == "vqa":
        return load_vqa(path, images, annotations, **kwargs)
    loaders = {"pope": load_pope, "mc": load_mc, "caption": load_captions}
    if task not in loaders:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")
    if annotations is not None:
        raise ValueError("--annotations applies to the vqa task only.")
    return loaders[task](path, images)


# -- the model -------------------------------------------------------------------------------------------


def check_checkpoint(folder: str | os.PathLike) -> None:
    """Raise a clear error unless `folder` is a tinylmm checkpoint (config of model_type tinylmm)."""
    folder = str(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{folder} is not a tinylmm checkpoint: it has no config.json.")
    with open(config_file, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != "tinylmm":
        raise ValueError(
            f"{folder} is not a tinylmm checkpoint: its config.json has model_type {model_type!r}, "
            "expected 'tinylmm'."
        )


def load_model(folder: str | os.PathLike, device: str | None = None, trust_remote_code: bool = False):
    """(model, processor) from a checkpoint folder through the Auto classes, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_tinylmm  # noqa: F401  (registers the Auto classes)
    import processors  # noqa: F401

    check_checkpoint(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def _open_image(value, blank: bool) -> Image.Image:
    image = value if isinstance(value, Image.Image) else Image.open(value)
    image = image.convert("RGB")
    return Image.new("RGB", image.size, BLANK_GREY) if blank else image


def _stop_ids(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in END_OF_TURN if t in vocab]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.no_grad()
def generate_answers(
    model,
    processor,
    samples: list[Sample],
    prompt_suffix: str = SHORT_ANSWER,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    blank_images: bool = False,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers, in the order of `samples`. Batches are padded on the left (so that every prompt
    ends where generation starts) and decoded with the KV cache. `blank_images` replaces every image by
    a constant grey one of the same size (what the model answers without seeing)."""
    tokenizer = processor.tokenizer
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt))  # less padding
    answers: list[str] = [""] * len(samples)
    stop = _stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            conversations, images = [], []
            for i in batch:
                s = samples[i]
                text = f"{s.prompt}\n{prompt_suffix}" if prompt_suffix else s.prompt
                content = [{"type": "text", "text": text}]
                if s.image is not None:
                    content.insert(0, {"type": "image"})
                    images.append([_open_image(s.image, blank_images)])
                else:
                    images.append([])
                conversations.append([{"role": "user", "content": content}])
            inputs = processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                padding=True,
                images=images if any(images) else None,
                return_tensors="pt",
            ).to(device)
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                eos_token_id=stop,
                pad_token_id=pad,
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = side
    return answers


# -- scoring ---------------------------------------------------------------------------------------------

_METRICS: dict[str, Any] = {}


def load_metric(name: str):
    """One of the project's evaluate modules (pope, vqa_accuracy, exact_match, multiple_choice), by path."""
    import evaluate

    if name not in _METRICS:
        _METRICS[name] = evaluate.load(str(METRICS_DIR / name))
    return _METRICS[name]


def _score_group(task: str, samples: list[Sample], predictions: list[str]) -> dict[str, float]:
    if task == "pope":
        result = load_metric("pope").compute(
            predictions=predictions, references=[s.references[0] for s in samples]
        )
        keep = ("accuracy", "precision", "recall", "f1", "yes_ratio", "empty")
        return {k: result[k] for k in keep}
    if task == "vqa":
        vqa = load_metric("vqa_accuracy").compute(
            predictions=predictions, references=[s.references for s in samples]
        )
        em = load_metric("exact_match").compute(
            predictions=predictions, references=[[s.extra["majority"]] for s in samples]
        )
        return {"vqa_accuracy": vqa["accuracy"], "exact_match": em["exact_match"]}
    if task == "mc":
        result = load_metric("multiple_choice").compute(
            predictions=predictions,
            references=[s.references[0] for s in samples],
            choices=[s.choices for s in samples],
        )
        return {"accuracy": result["accuracy"], "unparsed": result["unparsed"]}
    result = load_metric("exact_match").compute(
        predictions=predictions, references=[s.references for s in samples]
    )
    return {"exact_match": result["exact_match"], "f1": result["f1"]}


def score(task: str, samples: list[Sample], predictions: list[str]) -> dict[str, Any]:
    """Metrics overall and per category (POPE: per split; VQAv2: per answer type)."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.category].append(i)
    per_category = {
        cat: {"n": len(idx), **_score_group(task, [samples[i] for i in idx], [predictions[i] for i in idx])}
        for cat, idx in sorted(groups.items())
    }
    return {
        "overall": {"n": len(samples), **_score_group(task, samples, predictions)},
        "per_category": per_category,
    }


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
) -> dict[str, Any]:
    """Evaluate `model` (a checkpoint folder, or a (model, processor) pair) on a benchmark file or a list
    of samples. Returns {"task", "overall", "per_category", "predictions"}; metric values are fractions."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")
    samples = (
        load_benchmark(task, data, images, annotations) if isinstance(data, (str, os.PathLike)) else data
    )
    if not samples:
        raise BenchmarkError(f"{data}: no samples.")
    model, processor = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    predictions = generate_answers(
        model,
        processor,
        samples,
        prompt_suffix=PROMPT_SUFFIXES[task] if prompt_suffix is None else prompt_suffix,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[task],
        blank_images=blank_images,
        progress=progress,
        desc=f"{task}{' (blank images)' if blank_images else ''}",
    )
    result = {"task": task, **score(task, samples, predictions)}
    result["predictions"] = [
        {"id": s.id, "category": s.category, "prediction": p, "reference": s.references[0]}
        for s, p in zip(samples, predictions)
    ]
    return result


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per category and the overall row; fractions shown as percentages."""
    rows = [*result["per_category"].items(), ("overall", result["overall"])]
    keys = [k for k in result["overall"] if k != "n"]
    counts = {"empty", "unparsed"}
    lines = ["| category | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, metrics in rows:
        cells = [str(metrics[k]) if k in counts else f"{100 * metrics[k]:.1f}" for k in keys]
        lines.append(f"| {name} | {metrics['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the CLI subcommand ----------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on a benchmark file (POPE, VQAv2, MC, captions)"
    )
    parser.add_argument("--model", required=True, help="tinylmm checkpoint folder")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument(
        "--data", required=True, help="benchmark file (JSON / JSONL, see trainers/evaluation.py)"
    )
    parser.add_argument(
        "--images", default=None, help="folder of the images (default: the data file's folder)"
    )
    parser.add_argument(
        "--annotations", default=None, help="VQAv2 annotations file, when --data holds questions"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--prompt-suffix", default=None, help="text after each question (default: the paper's)"
    )
    parser.add_argument("--blank-images", action="store_true", help="replace every image by a grey one")
    parser.add_argument(
        "--output", default=None, help="write the results (with predictions) to this JSON file"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="load the model with its own code")


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    result = evaluate_model(
        model,
        args.task,
        args.data,
        images=args.images,
        annotations=args.annotations,
        batch_size=args.batch_size,
        prompt_suffix=args.prompt_suffix,
        max_new_tokens=args.max_new_tokens,
        blank_images=args.blank_images,
    )
    result = {"model": str(args.model), "data": str(args.data), **result}
    print(format_table(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0
