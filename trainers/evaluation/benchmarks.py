"""Benchmark files in their public formats, read into `Sample`s; the prompt each task asks with.

- pope: JSONL, one probe a line: `question` (or POPE's `text`), `label` (yes / no), `image`, and optionally
  `category` (the split: random, popular, adversarial), `question_id`.
- vqa: VQAv2, either a JSON object holding `questions` and `annotations` (the two official files merged),
  the questions file with `annotations=FILE`, or JSONL rows with `question`, `answers` (strings or
  {"answer": ...}), `image` or `image_id`, and optionally `category` / `answer_type`. Images named by
  `image_id` follow `image_pattern` (COCO's by default).
- mc: JSONL (ScienceQA / MMBench style): `question`, the options as `options` / `choices` (a list) or
  MMBench's columns A, B, C …, `answer` (a letter or an option index), optionally `hint`, `image`,
  `category`.
- caption: JSONL: `image`, `captions` (a list) or `caption`, optionally `prompt`, `category`.

Relative image paths are resolved against `images`, else against the data file's folder.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..records import RecordFileError, read_records

TASKS = ("pope", "vqa", "mc", "caption")
SHORT_ANSWER = "Answer the question using a single word or phrase."
# The prompt suffixes the LLaVA family of papers use.
PROMPT_SUFFIXES = {
    "pope": SHORT_ANSWER,
    "vqa": SHORT_ANSWER,
    "mc": "Answer with the option's letter from the given choices directly.",
    "caption": "",
}
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
MAX_NEW_TOKENS = {"pope": 16, "vqa": 16, "mc": 16, "caption": 64}
COCO_IMAGE_PATTERN = "COCO_val2014_{image_id:012d}.jpg"


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
    try:
        return list(read_records(path, what="benchmark file"))
    except RecordFileError as err:
        raise BenchmarkError(str(err)) from None


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
    task: str,
    path: str,
    images: str | None = None,
    annotations: str | None = None,
    image_pattern: str | None = None,
) -> list[Sample]:
    """Read a benchmark file of `task`; clear errors name the file and line of a bad record."""
    if task == "vqa":
        return load_vqa(path, images, annotations, image_pattern or COCO_IMAGE_PATTERN)
    loaders = {"pope": load_pope, "mc": load_mc, "caption": load_captions}
    if task not in loaders:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")
    for name, value in (("annotations", annotations), ("image_pattern", image_pattern)):
        if value is not None:
            raise ValueError(f"--{name} applies to the vqa task only.")
    return loaders[task](path, images)
