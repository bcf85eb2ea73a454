"""Training data: LLaVA-format JSON and TRL-style `messages` datasets, as one row format.

Every dataset the trainers see has rows `{"messages": [{"role", "content"}], "images": [...], "videos":
[...], "sample_index": int}`. LLaVA JSON / JSONL (`image` or `images`, `video`, `conversations` with
`from: human|gpt|system`) is converted once to that form, keeping image *paths*: the collator opens them,
so memory stays flat with dataset size. TRL-style datasets (any `datasets` source, local files, streaming)
already have it; `sample_index` is added so that errors can name a sample.

`<image>` / `<video>` markers in string content say where each visual goes; a sample with visuals and no
markers gets them at the start of its first user turn (TRL's convention).

Image paths are resolved against the image folder and must stay inside it: `../x.png` or an absolute path
elsewhere is an error naming the sample. The check is on the normalised path, before symbolic links are
followed: a link placed inside the folder (an image folder that links to shared storage) is the folder
owner's choice and is allowed; a path written in the data cannot climb out.

A LLaVA file's converted rows are cached by datasets (an Arrow file) under a key made of the file's content
(SHA-256 of every byte), the image folder and this module's code: an edited file is converted again, also in
a new process. Size and modification time would miss an edit that keeps both (`cp -p`, `rsync -t`); hashing
costs one read of the file, less than the JSON parse every load already does to tell a LLaVA file from a
`messages` one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, IterableDataset, load_dataset

from .records import read_records

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
    if not isinstance(messages, (list, tuple)):
        raise _fail(index, f"the conversation is {type(messages).__name__}; expected a list of turns.")
    roles = []
    for turn, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(
                index, f"turn {turn} is {type(message).__name__} {message!r:.60}; expected an object."
            )
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
    if not isinstance(content, (list, tuple)):
        raise ValueError(
            f"the text is {type(content).__name__} {content!r:.60}; expected a string (or a list of content parts)."
        )
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "image", "video"):
            shown = f"of type {kind!r}" if isinstance(part, dict) else f"{part!r:.60}"
            raise ValueError(f"content part {shown}; expected a text, image or video part.")
        text = part.get("text") or ""
        if kind == "text" and not isinstance(text, str):
            raise ValueError(f"a text part holds {type(text).__name__} {text!r:.60}; expected a string.")
        parts.append({"type": "text", "text": text} if kind == "text" else {"type": kind})
    return parts


def modality_length(messages: list[dict], has_visuals: bool) -> int:
    """LLaVA's modality length, what `group_by_modality_length` sorts by: the conversation's word count + 1,
    negative for a text-only sample."""
    words = 0
    for message in messages or []:
        for part in _parts(message.get("content", message.get("value"))):
            if part["type"] == "text":
                words += len(part["text"].split())
    return words + 1 if has_visuals else -(words + 1)


def to_chat(messages: list[dict], num_images: int, num_videos: int, index=None) -> list[dict]:
    """Validated messages with list-of-parts content, one image / video part per visual input."""
    roles = check_roles(messages, index)
    chat = []
    for turn, (role, message) in enumerate(zip(roles, messages)):
        try:
            chat.append({"role": role, "content": _parts(message.get("content", message.get("value")))})
        except ValueError as err:
            raise _fail(index, f"turn {turn} ({role}): {err}") from None
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
    for path in images + videos:
        if not isinstance(path, str):
            raise _fail(
                index, f"image / video path {path!r:.60} is {type(path).__name__}; expected a string."
            )
    conversations = row["conversations"]
    # LLaVA-OneVision's video rows mark the video with <image>.
    if videos and not images and isinstance(conversations, list):
        conversations = [
            {**turn, "value": turn["value"].replace(IMAGE_MARKER, VIDEO_MARKER)}
            if isinstance(turn, dict) and isinstance(turn.get("value"), str)
            else turn
            for turn in conversations
        ]
    chat = to_chat(conversations, len(images), len(videos), index)
    messages = [{"role": m["role"], "content": (m2.get("value") or "")} for m, m2 in zip(chat, conversations)]
    return {
        "messages": messages,
        "images": [resolve_path(p, image_folder, index) for p in images],
        "videos": [resolve_path(p, image_folder, index) for p in videos],
        "sample_index": index,
        "modality_length": modality_length(chat, bool(images or videos)),
    }


def _llava_rows(path: str, image_folder: str | None) -> Iterator[dict]:
    for index, (where, row) in enumerate(read_records(path)):
        if where == "the top level":
            raise ValueError(f"{path}: a LLaVA JSON file holds a list of samples, got a single object.")
        if not isinstance(row, dict):
            raise _fail(index, f"({path}, {where}) is {type(row).__name__}; expected an object.")
        try:
            yield llava_row(row, index, image_folder)
        except SampleError as err:
            raise SampleError(f"{path}, {where}: {err}") from None


def _first_record(path: str):
    """The first record of a JSON / JSONL data file; raise when it holds none."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes); a data file needs at least one sample.")
    first = next(read_records(path), None)
    if first is None:
        raise ValueError(f"{path} holds no samples (an empty list or only blank lines).")
    return first[1]


def is_llava_file(path: str) -> bool:
    if not (os.path.isfile(path) and path.endswith((".json", ".jsonl"))):
        return False
    first = _first_record(path)
    return isinstance(first, dict) and "conversations" in first


def resolve_path(path: str, folder: str | None, index=None) -> str:
    """`path` resolved against `folder` (absolute paths stay as they are). With a folder, a path that leads
    outside it once normalised (`../x.png`, an absolute path elsewhere) is an error naming the sample."""
    if folder is None:
        return path
    root = os.path.normpath(os.path.abspath(folder))
    full = os.path.normpath(os.path.join(root, path))  # an absolute `path` replaces `root`
    if os.path.commonpath([root, full]) != root:
        raise _fail(
            index,
            f"image path {path!r} leads outside the image folder {root} (to {full}). Paths in the data must "
            "stay inside the image folder: set --image_folder to a folder that holds every image.",
        )
    return full


def _content_fingerprint(path: str, image_folder: str) -> str:
    """The Arrow cache key of a LLaVA file's converted rows: its bytes, the image folder the paths were
    resolved against, and this module's code (the conversion)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    digest.update(b"\0" + image_folder.encode() + b"\0" + Path(__file__).read_bytes())
    return f"llava-{digest.hexdigest()[:32]}"


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
    # the validated rows land in an Arrow file (memory-mapped, cached under the file's content).
    try:
        return Dataset.from_generator(
            _llava_rows,
            features=FEATURES,
            gen_kwargs=gen_kwargs,
            fingerprint=_content_fingerprint(path, image_folder),
        )
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
                path = resolve_path(path, image_folder, index)
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
    if len(bad) == len(dataset):
        shown = "; ".join(f"sample {i}: {p}" for i, p in missing[:3])
        raise FileNotFoundError(
            f"the image files of every sample are missing ({len(missing)} file(s), e.g. {shown}); nothing is "
            "left to train on. Check the image paths and "
            + (f"--image_folder ({image_folder})." if image_folder else "set --image_folder.")
        )
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
