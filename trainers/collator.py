"""The collator: common rows -> padded model inputs with labels on the assistant turns only.

Images are opened here, one batch at a time (rows keep paths). Each sample is processed on its own, so
that one that is too long can be shortened at a turn boundary (its last exchanges dropped, with the
images they hold) or dropped whole; image placeholders are never cut. Per-sample outputs are then padded
and concatenated: `pixel_values` and `image_layout` are per crop / per visual input in marker order,
so concatenating samples gives what a batched processor call gives.

Tokenised once: `encode` renders and tokenises a row's chat with every visual input as ONE placeholder
token, and the trainer maps it over the dataset before training (`encode_dataset`). A batch then costs
per sample only opening and preprocessing its images (in DataLoader workers when there are any) and
expanding each placeholder to the count the image processor gives; a sample that does not fit `max_length`
goes the full way above, so it is shortened or dropped exactly as before.

Packing (`packing=True`): the samples of a batch are packed, whole, into as few rows of at most
`max_length` tokens as best-fit decreasing finds (the longest sample's length without `max_length`), with
`position_ids` restarting at 0 for each sample and no `attention_mask`: transformers then keeps attention
inside each sample (a block-diagonal mask with eager / SDPA, variable-length kernels with flash-attention).
The first label of each sample is ignored, so no sample learns to predict the next one's first token;
`pixel_values` and `image_layout` follow the samples in row-major order, which is the order the model fills
placeholders in.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from PIL import Image

from processors.image_processing_tinylmm import LAYOUT_FIELDS, TinyLMMImageProcessor, load_image

from .data import SampleError, example_visuals, resolve_path, to_chat

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Batch keys that carry counts to the trainer (popped there before the forward).
DROPPED_KEY, SKIPPED_KEY = "num_dropped_too_long", "num_skipped_missing_images"
# Real (not padding) tokens in the batch: with the batch's size, the packing efficiency.
TOKENS_KEY = "num_real_tokens"
# Columns `encode` adds: token ids with one placeholder per visual input, the assistant mask, and the kind of
# each visual input in placeholder order (0 image, 1 video).
CHAT_IDS, CHAT_MASK, CHAT_VISUALS = "chat_input_ids", "chat_assistant_mask", "chat_visual_kinds"
ENCODED_COLUMNS = (CHAT_IDS, CHAT_MASK, CHAT_VISUALS)
_NUM_TOKENS = LAYOUT_FIELDS.index("num_tokens")
# The columns a row's chat and visual inputs are read from (`encode` reads no other).
_ROW_COLUMNS = ("messages", "conversations", "images", "image", "videos", "video", "sample_index")
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _exchange_ends(chat: list[dict]) -> list[int]:
    """Message counts that end right after an assistant turn (where a conversation may be cut)."""
    return [i + 1 for i, m in enumerate(chat) if m["role"] == "assistant"]


def _count(chat: list[dict], kind: str) -> int:
    return sum(p["type"] == kind for m in chat for p in m["content"])


class _OnePlaceholderEach:
    """Stands in for the image processor while a chat is tokenised ahead of its images: each visual input
    becomes one placeholder token (the processor's own rendering, tokenisation and assistant mask are used
    unchanged), and the kinds are recorded in placeholder order."""

    def __init__(self):
        self.kinds: list[int] = []
        self._record = [0] * len(LAYOUT_FIELDS)
        self._record[_NUM_TOKENS] = 1

    def image_crops(self, image, single: bool = True):
        self.kinds.append(0)
        return np.zeros((0, 3, 1, 1), np.float32), self._record

    def video_frames(self, video):
        self.kinds.append(1)
        return np.zeros((0, 3, 1, 1), np.float32), self._record


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: sample indices grouped into rows of at most `capacity` tokens (a longer sample
    gets a row of its own), longest samples first; each sample goes into the fullest row it fits in."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if free[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: free[r])
            rows[best].append(i)
            free[best] -= lengths[i]
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


@dataclass
class TinyLMMCollator:
    """Build model inputs from rows `{"messages", "images", "videos", "sample_index"}`.

    Args:
        processor: a TinyLMMProcessor.
        max_length: longest sequence (in tokens, image placeholders included); None for no limit. Longer
            samples lose their last exchanges until they fit, or are dropped when even the first exchange
            does not fit; drops are counted and reported by the trainer.
        chat_template: a template name (`plain`, `chatml` …) or Jinja; the processor's own when None.
        image_folder: folder that relative image / video paths are resolved against.
        skip_missing_images: drop samples whose image files are missing (counted) instead of raising.
        assistant_only: supervise assistant turns only (each with its end-of-turn token); else every
            non-image token.
        pad_to_multiple_of: pad the batch length to a multiple of this.
        packing: pack the batch's samples into rows (see the module docstring) instead of padding each.
    """

    processor: Any
    max_length: int | None = None
    chat_template: str | None = None
    image_folder: str | None = None
    skip_missing_images: bool = False
    assistant_only: bool = True
    pad_to_multiple_of: int | None = None
    packing: bool = False
    stats: dict = field(default_factory=lambda: {DROPPED_KEY: 0, SKIPPED_KEY: 0}, repr=False)

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with.")
        self.placeholder_ids = torch.tensor(
            sorted({self.processor.image_token_id, self.processor.video_token_id} - {None})
        )
        self._placeholders = self.placeholder_ids.numpy()
        self._one_each = _OnePlaceholderEach()
        self._text_processor = copy.copy(self.processor)
        self._text_processor.image_processor = self._one_each

    # -- one sample ---------------------------------------------------------------------------------

    def _open(self, value, index, kind: str):
        if isinstance(value, (str, os.PathLike)):
            path = resolve_path(os.fspath(value), self.image_folder, index)
            if not os.path.exists(path):
                raise FileNotFoundError(f"sample {index}: {kind} file not found: {path}")
            if kind == "video":
                if os.path.isdir(path):  # a folder of frames
                    names = sorted(n for n in os.listdir(path) if n.lower().endswith(_FRAME_SUFFIXES))
                    return [load_image(os.path.join(path, n)) for n in names]
                return path  # a video file: the processor decodes it
            value = path
        if kind == "video":
            return [self._open(frame, index, "image") for frame in value]
        try:
            return value if isinstance(value, Image.Image) else load_image(value)
        except ValueError as err:
            raise SampleError(f"sample {index}: {err}") from err

    def _encode(self, chat: list[dict], images: list, videos: list) -> dict[str, torch.Tensor]:
        out = self.processor.apply_chat_template(
            [chat],
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            images=[images] if images else None,
            videos=[videos] if videos else None,
            return_tensors="pt",
        )
        return dict(out)

    def _fit(self, chat, images, videos, index) -> dict[str, torch.Tensor] | None:
        """Encode a sample, shortened at a turn boundary to max_length if needed; None when it cannot fit."""
        encoded = self._encode(chat, images, videos)
        if self.max_length is None or encoded["input_ids"].shape[1] <= self.max_length:
            return encoded
        for end in reversed(_exchange_ends(chat)[:-1]):
            kept = chat[:end]
            encoded = self._encode(kept, images[: _count(kept, "image")], videos[: _count(kept, "video")])
            if encoded["input_ids"].shape[1] <= self.max_length:
                logger.info(
                    "sample %s shortened to %d message(s) to fit max_length=%d", index, end, self.max_length
                )
                return encoded
        logger.warning(
            "sample %s dropped: its first exchange is longer than max_length=%d (image tokens are never cut).",
            index,
            self.max_length,
        )
        return None

    def _labels(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = encoded["input_ids"][0]
        labels = input_ids.clone()
        if self.assistant_only:
            labels[encoded["assistant_masks"][0] == 0] = IGNORE_INDEX
        labels[torch.isin(input_ids, self.placeholder_ids)] = IGNORE_INDEX
        return labels

    # -- tokenised once --------------------------------------------------------------------------------

    def encode(self, example: dict[str, Any]) -> dict[str, list[int]]:
        """The chat of a row rendered and tokenised, each visual input as one placeholder token: the columns
        a batch expands (see `encode_dataset`)."""
        index = example.get("sample_index")
        images, videos = example_visuals(example)
        messages = example.get("messages", example.get("conversations"))
        chat = to_chat(messages or [], len(images), len(videos), index)
        self._one_each.kinds = []
        out = self._text_processor.apply_chat_template(
            [chat],
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            images=[[None] * len(images)] if images else None,
            videos=[[None] * len(videos)] if videos else None,
        )
        return {
            CHAT_IDS: list(out["input_ids"][0]),
            CHAT_MASK: list(out["assistant_masks"][0]),
            CHAT_VISUALS: list(self._one_each.kinds),
        }

    def encode_dataset(self, dataset, num_proc: int | None = None):
        """`dataset` with the `encode` columns added: a `datasets` map over the text columns only (images are
        neither decoded nor copied), cached under a fingerprint of the dataset and of what the encoding
        depends on, and joined to the dataset column-wise; lazy for a streaming dataset. Anything that is
        not a `datasets` dataset is returned as it is (its rows are encoded batch by batch)."""
        if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
            return dataset
        if CHAT_IDS in (dataset.column_names or []):
            return dataset
        if isinstance(dataset, datasets.IterableDataset):
            return dataset.map(self.encode)
        columns = [c for c in _ROW_COLUMNS if c in dataset.column_names]
        view = dataset.select_columns(columns)
        for column, feature in view.features.items():  # count images without decoding them
            inner = getattr(feature, "feature", feature)
            if isinstance(inner, datasets.Image):
                image = datasets.Image(decode=False)
                view = view.cast_column(column, datasets.List(image) if inner is not feature else image)
        fingerprint = Hasher.hash(
            [dataset._fingerprint, self._encoding_key(), ENCODED_COLUMNS, "tinylmm-encode-1"]
        )
        encoded = view.map(
            self.encode,
            remove_columns=columns,
            num_proc=num_proc,
            new_fingerprint=fingerprint,
            desc="Tokenising chats",
        )
        return datasets.concatenate_datasets([dataset, encoded], axis=1)

    def _encoding_key(self) -> list:
        """What the encoded columns depend on besides the rows: the template, the tokenizer, the labels."""
        tokenizer = self.processor.tokenizer
        template = self.chat_template if self.chat_template is not None else self.processor.chat_template
        vocab = sorted(tokenizer.get_vocab().items())
        return [template, vocab, tokenizer.bos_token, tokenizer.eos_token, self.assistant_only]

    def _from_encoded(self, example, images, videos, index):
        """(input_ids, labels, (pixel_values, image_layout) or None) from the encoded columns, or None when the
        sample does not fit `max_length` (it then goes the full way, to be shortened or dropped)."""
        ids = np.asarray(example[CHAT_IDS], dtype=np.int64)
        kinds = list(example[CHAT_VISUALS])
        where = np.flatnonzero(np.isin(ids, self._placeholders))
        if len(where) != len(kinds) or kinds.count(0) != len(images) or kinds.count(1) != len(videos):
            return None  # the full way names the mismatch
        processor = self.processor.image_processor
        parts, image_iter, video_iter = [], iter(images), iter(videos)
        for number, kind in enumerate(kinds):
            try:
                if kind == 0:
                    parts.append(processor.image_crops(next(image_iter), single=len(images) == 1))
                else:
                    parts.append(processor.video_frames(next(video_iter)))
            except (ValueError, FileNotFoundError) as err:
                what = "image" if kind == 0 else "video"
                raise SampleError(f"sample {index}, visual input {number + 1} ({what}): {err}") from err
        repeats = np.ones(len(ids), dtype=np.int64)
        repeats[where] = [record[_NUM_TOKENS] for _, record in parts]
        if self.max_length is not None and int(repeats.sum()) > self.max_length:
            return None
        input_ids = torch.from_numpy(np.repeat(ids, repeats))
        labels = input_ids.clone()
        if self.assistant_only:
            mask = np.repeat(np.asarray(example[CHAT_MASK], dtype=bool), repeats)
            labels[torch.from_numpy(~mask)] = IGNORE_INDEX
        labels[torch.isin(input_ids, self.placeholder_ids)] = IGNORE_INDEX
        visual = None
        if parts:
            packed = TinyLMMImageProcessor.pack(parts, return_tensors="pt")
            visual = (packed["pixel_values"], packed["image_layout"])
        return input_ids, labels, visual

    # -- the batch ----------------------------------------------------------------------------------

    def _sample(self, example, position) -> tuple | str:
        """(input_ids, labels, visual parts or None) of one row, or "dropped" / "skipped"."""
        index = example.get("sample_index", position)
        images, videos = example_visuals(example)
        encoded = CHAT_IDS in example
        if not encoded:
            messages = example.get("messages", example.get("conversations"))
            chat = to_chat(messages or [], len(images), len(videos), index)
        try:
            images = [self._open(x, index, "image") for x in images]
            videos = [self._open(x, index, "video") for x in videos]
        except FileNotFoundError as err:
            if not self.skip_missing_images:
                raise
            logger.warning("%s; sample skipped.", err)
            return "skipped"
        if encoded:
            sample = self._from_encoded(example, images, videos, index)
            if sample is not None:
                return sample
            messages = example.get("messages", example.get("conversations"))
            chat = to_chat(messages or [], len(images), len(videos), index)
        full = self._fit(chat, images, videos, index)
        if full is None:
            return "dropped"
        visual = (full["pixel_values"], full["image_layout"]) if "pixel_values" in full else None
        return full["input_ids"][0], self._labels(full), visual

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        samples, dropped, skipped = [], 0, 0
        for position, example in enumerate(examples):
            sample = self._sample(example, position)
            if sample == "dropped":
                dropped += 1
            elif sample == "skipped":
                skipped += 1
            else:
                samples.append(sample)
        self.stats[DROPPED_KEY] += dropped
        self.stats[SKIPPED_KEY] += skipped
        if not samples:  # every sample dropped: one padding row that supervises nothing keeps the step valid
            samples = [(torch.tensor([self.pad_token_id]), torch.tensor([IGNORE_INDEX]), None)]
        if self.packing:
            batch, order = self._pack([(ids, lab) for ids, lab, _ in samples])
        else:
            batch, order = self._pad([(ids, lab) for ids, lab, _ in samples]), range(len(samples))
        visual_parts = [samples[i][2] for i in order if samples[i][2] is not None]
        if visual_parts:
            batch["pixel_values"] = torch.cat([p for p, _ in visual_parts])
            batch["image_layout"] = torch.cat([layout for _, layout in visual_parts])
        batch[DROPPED_KEY], batch[SKIPPED_KEY] = dropped, skipped
        batch[TOKENS_KEY] = sum(len(ids) for ids, _, _ in samples)
        return batch

    def _length(self, longest: int) -> int:
        if self.pad_to_multiple_of:
            return -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return longest

    def _pack(
        self, rows: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Rows packed (best-fit decreasing) with per-sample position ids; also the samples' order in it."""
        lengths = [len(ids) for ids, _ in rows]
        bins = pack_rows(lengths, self.max_length or max(lengths))
        length = self._length(max(sum(lengths[i] for i in members) for members in bins))
        input_ids = torch.full((len(bins), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(bins), length), IGNORE_INDEX, dtype=torch.long)
        # Padding gets positions of its own (restarting at 0), so it reads as one more sample that nothing
        # attends to.
        position_ids = torch.zeros((len(bins), length), dtype=torch.long)
        for r, members in enumerate(bins):
            start = 0
            for i in members:
                ids, lab = rows[i]
                end = start + len(ids)
                input_ids[r, start:end] = ids
                labels[r, start:end] = lab
                labels[r, start] = IGNORE_INDEX  # never a target: nothing before it belongs to its sample
                position_ids[r, start:end] = torch.arange(len(ids))
                start = end
            position_ids[r, start:] = torch.arange(length - start)
        order = [i for members in bins for i in members]
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}, order

    def _pad(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = self._length(max(len(ids) for ids, _ in rows))
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            labels[i, : len(ids)] = lab
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
