"""Training data: LLaVA-format JSON and TRL-style `messages` datasets, as one row format.

Every dataset the trainers see has rows `{"messages": [{"role", "content"}], "images": [...], "videos":
[...], "sample_index": int}`. LLaVA JSON / JSONL (`image` or `images`, `video`, `conversations` with
`from: human|gpt|system`) is converted once to that form, keeping image *paths*: the collator opens them,
so memory stays flat with dataset size. TRL-style datasets (any `datasets` source, local files, streaming)
already have it; `sample_index` is added so that errors can name a sample.

`<image>` / `<video>` markers in string content say where each visual goes; a sample with visuals and no
markers gets them at the start of its first user turn (TRL's convention).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, IterableDataset, load_dataset

logger = logging.getLogger(__name__)

IMAGE_MARKER, VIDEO_MARKER = "<image>", "<video>"
_MARKERS = re.compile(r"\s*(<image>|<video>)\s*")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

FEATURES = datasets.Features(
    {
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "images": [datasets.Value("string")],
        "videos": [datasets.Value("string")],
        "sample_index": datasets.Value("int64"),
        "modality_length": datasets.Value("int64"),
    }
)


class SampleError(ValueError):
    """A training sample that cannot be used; the message names the sample."""


def _fail(index, problem: str) -> SampleError:
    return SampleError(f"sample {index}: {problem}")


# ---------------------------------------------------------------------------------------------------------
# Conversations: validation and conversion to content parts


def check_roles(messages: list[dict], index=None) -> list[str]:
    """Normalised roles of a conversation; raise on an empty one, a bad order, or a user turn last."""
    if not messages:
        raise _fail(index, "empty conversation.")
    roles = []
    for turn, message in enumerate(messages):
        raw = message.get("role", message.get("from"))
        if raw not in ROLES:
            raise _fail(index, f"turn {turn} has role {raw!r}; expected one of {sorted(ROLES)}.")
        roles.append(ROLES[raw])
    body = roles[1:] if roles[0] == "system" else roles
    if not body:
        raise _fail(index, "the conversation holds only a system message.")
    for turn, role in enumerate(body):
        expected = "user" if turn % 2 == 0 else "assistant"
        if role != expected:
            turn += len(roles) - len(body)
            raise _fail(
                index,
                f"roles out of order: turn {turn} is {role!r} where {expected!r} was expected "
                f"(roles: {roles}); a conversation is an optional system turn, then user and assistant turns in "
                "alternation.",
            )
    if body[-1] != "assistant":
        raise _fail(index, "the conversation ends on a user turn; there is no response to learn from.")
    return roles


def _parts(content) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        parts = []
        for piece in _MARKERS.split(content):
            if piece in (IMAGE_MARKER, VIDEO_MARKER):
                parts.append({"type": piece[1:-1]})
            elif piece:
                parts.append({"type": "text", "text": piece})
        return parts
    parts = []
    for part in content:
        kind = part.get("type")
        if kind not in ("text", "image", "video"):
            raise ValueError(f"content part of type {kind!r}; expected text, image or video.")
        parts.append({"type": "text", "text": part.get("text") or ""} if kind == "text" else {"type": kind})
    return parts


def to_chat(messages: list[dict], num_images: int, num_videos: int, index=None) -> list[dict]:
    """Validated messages with list-of-parts content, one image / video part per visual input."""
    roles = check_roles(messages, index)
    try:
        chat = [
            {"role": r, "content": _parts(m.get("content", m.get("value")))} for r, m in zip(roles, messages)
        ]
    except ValueError as err:
        raise _fail(index, str(err)) from None
    counts = {kind: sum(p["type"] == kind for m in chat for p in m["content"]) for kind in ("image", "video")}
    if counts == {"image": 0, "video": 0} and (num_images or num_videos):
        first_user = roles.index("user")
        visuals = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
        chat[first_user]["content"] = visuals + chat[first_user]["content"]
        counts = {"image": num_images, "video": num_videos}
    for kind, given in (("image", num_images), ("video", num_videos)):
        if counts[kind] != given:
            raise _fail(
                index,
                f"{counts[kind]} <{kind}> marker(s) in the conversation but {given} {kind}(s) given; each "
                f"<{kind}> stands for one {kind}, in order.",
            )
    for turn, message in enumerate(chat):
        if message["role"] == "assistant" and not any(
            p["type"] == "text" and p["text"].strip() for p in message["content"]
        ):
            raise _fail(index, f"turn {turn}: the assistant's response is empty.")
    return chat


# ---------------------------------------------------------------------------------------------------------
# LLaVA format


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def llava_row(row: dict, index: int, image_folder: str | None = None) -> dict:
    """One LLaVA-format row in the common row format (validated; paths resolved against `image_folder`,
    not opened)."""
    if "conversations" not in row:
        raise _fail(index, f"no 'conversations' field (fields: {sorted(row)}).")
    images = _as_list(row.get("images", row.get("image")))
    videos = _as_list(row.get("videos", row.get("video")))
    conversations = row["conversations"]
    # LLaVA-OneVision's video rows mark the video with <image>.
    if videos and not images:
        conversations = [
            {**turn, "value": (turn.get("value") or "").replace(IMAGE_MARKER, VIDEO_MARKER)}
            for turn in conversations
        ]
    chat = to_chat(conversations, len(images), len(videos), index)
    words = sum(len(p["text"].split()) for m in chat for p in m["content"] if p["type"] == "text")
    messages = [{"role": m["role"], "content": (m2.get("value") or "")} for m, m2 in zip(chat, conversations)]
    return {
        "messages": messages,
        "images": [resolve_path(str(p), image_folder) for p in images],
        "videos": [resolve_path(str(p), image_folder) for p in videos],
        "sample_index": index,
        # LLaVA's modality-length grouping: text length, negative for text-only samples.
        "modality_length": words + 1 if images or videos else -(words + 1),
    }


def _read_rows(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for line_number, line in enumerate(f):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}, line {line_number + 1}: not valid JSON ({err}).") from None
        else:
            rows = json.load(f)
            if not isinstance(rows, list):
                raise ValueError(
                    f"{path}: a LLaVA JSON file holds a list of samples, got {type(rows).__name__}."
                )
            yield from rows


def _llava_rows(path: str, image_folder: str | None) -> Iterator[dict]:
    for index, row in enumerate(_read_rows(path)):
        yield llava_row(row, index, image_folder)


def is_llava_file(path: str) -> bool:
    if not (os.path.isfile(path) and path.endswith((".json", ".jsonl"))):
        return False
    first = next(_read_rows(path), None)
    return isinstance(first, dict) and "conversations" in first


def resolve_path(path: str, folder: str | None) -> str:
    return path if folder is None or os.path.isabs(path) else os.path.join(folder, path)


def load_llava(
    path: str, image_folder: str | None = None, streaming: bool = False
) -> Dataset | IterableDataset:
    """A LLaVA JSON / JSONL file as a dataset of common rows (validated as converted). Relative image paths
    are resolved against `image_folder`, by default the file's own folder."""
    image_folder = os.path.abspath(image_folder or os.path.dirname(path))
    gen_kwargs = {"path": path, "image_folder": image_folder}
    if streaming:
        return IterableDataset.from_generator(_llava_rows, features=FEATURES, gen_kwargs=gen_kwargs)
    # Validate in this process first: a bad sample fails with its own message, not a generation error, and
    # the validated rows land in an Arrow file (memory-mapped, cached).
    try:
        return Dataset.from_generator(_llava_rows, features=FEATURES, gen_kwargs=gen_kwargs)
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ValueError):
            cause = cause.__cause__
        raise cause or err from None


def _path_columns(dataset: Dataset) -> list[str]:
    """Columns holding image / video paths as strings (decoded `Image` columns need no check)."""
    columns = []
    for column in ("images", "videos"):
        feature = dataset.features.get(column)
        inner = getattr(feature, "feature", feature)
        if isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string"):
            columns.append(column)
    return columns


def find_missing_images(dataset: Dataset, image_folder: str | None) -> list[tuple[int, str]]:
    """(sample_index, path) of every image / video path of a map-style dataset that does not exist."""
    missing = []
    columns = _path_columns(dataset)
    if not columns:
        return missing
    indices = dataset["sample_index"]
    for column in columns:
        for index, paths in zip(indices, dataset[column]):
            for path in paths or []:
                path = resolve_path(path, image_folder)
                if not os.path.exists(path):
                    missing.append((index, path))
    return sorted(missing)


def drop_missing(dataset: Dataset, image_folder: str | None, skip: bool) -> tuple[Dataset, int]:
    """Raise on samples whose image files are missing, or drop them (when `skip`) and say how many."""
    missing = find_missing_images(dataset, image_folder)
    if not missing:
        return dataset, 0
    if not skip:
        shown = "; ".join(f"sample {i}: {p}" for i, p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{len(missing)} image file(s) not found: {shown}{more}. Check --image_folder, or pass "
            "--skip_missing_images to train without those samples."
        )
    bad = {i for i, _ in missing}
    kept = dataset.filter(lambda i: i not in bad, input_columns="sample_index")
    logger.warning("skipped %d sample(s) whose image files are missing.", len(dataset) - len(kept))
    return kept, len(dataset) - len(kept)


# ---------------------------------------------------------------------------------------------------------
# Any source


def _with_index(dataset):
    if "sample_index" in (dataset.column_names or []):
        return dataset
    return dataset.map(lambda row, i: {"sample_index": i}, with_indices=True)


def load_training_data(
    path: str,
    *,
    split: str = "train",
    name: str | None = None,
    image_folder: str | None = None,
    streaming: bool = False,
    skip_missing_images: bool = False,
) -> tuple[Dataset | IterableDataset, int]:
    """Load a LLaVA JSON / JSONL file or a TRL-style dataset (Hub id, local folder or data file).

    Returns the dataset and the number of samples dropped for missing image files (map-style LLaVA data is
    checked up front; anything else is checked by the collator as it opens files).
    """
    if is_llava_file(path):
        dataset = load_llava(path, image_folder, streaming=streaming)
    elif os.path.isfile(path):
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(
            Path(path).suffix
        )
        if builder is None:
            raise ValueError(f"{path}: unsupported data file type; use JSON, JSONL or Parquet.")
        dataset = load_dataset(builder, data_files=path, split=split, streaming=streaming)
    else:
        dataset = load_dataset(path, name=name, split=split, streaming=streaming)
    columns = dataset.column_names or []
    if "messages" not in columns and "conversations" not in columns:
        raise ValueError(
            f"{path}: no 'messages' (TRL style) or 'conversations' (LLaVA style) column; columns: {columns}."
        )
    dataset = _with_index(dataset)
    skipped = 0
    if isinstance(dataset, Dataset):
        dataset, skipped = drop_missing(dataset, image_folder, skip_missing_images)
    return dataset, skipped


def _embedded(messages, kind: str) -> list:
    """Visual inputs carried inside content parts ({"type": "image", "image": …} or "path" / "url")."""
    found = []
    for message in messages or []:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == kind:
                    value = next((part[k] for k in (kind, "path", "url") if part.get(k) is not None), None)
                    if value is not None:
                        found.append(value)
    return found


def example_visuals(example: dict[str, Any]) -> tuple[list, list]:
    """A row's images and videos: its `images` / `videos` columns, else those inside its content parts."""
    images = _as_list(example.get("images", example.get("image")))
    videos = _as_list(example.get("videos", example.get("video")))
    messages = example.get("messages")
    if not images:
        images = _embedded(messages, "image")
    if not videos:
        videos = _embedded(messages, "video")
    return images, videos
