"""The collator: common rows -> padded model inputs with labels on the assistant turns only.

Images are opened here, one batch at a time (rows keep paths). Each sample is processed on its own, so
that one that is too long can be shortened at a turn boundary (its last exchanges dropped, with the
images they hold) or dropped whole; image placeholders are never cut. Per-sample outputs are then padded
and concatenated: `pixel_values` and `image_layout` are per crop / per visual input in marker order,
so concatenating samples gives what a batched processor call gives.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from processors.image_processing_tinylmm import load_image

from .data import SampleError, example_visuals, resolve_path, to_chat

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Batch keys that carry counts to the trainer (popped there before the forward).
DROPPED_KEY, SKIPPED_KEY = "num_dropped_too_long", "num_skipped_missing_images"
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _exchange_ends(chat: list[dict]) -> list[int]:
    """Message counts that end right after an assistant turn (where a conversation may be cut)."""
    return [i + 1 for i, m in enumerate(chat) if m["role"] == "assistant"]


def _count(chat: list[dict], kind: str) -> int:
    return sum(p["type"] == kind for m in chat for p in m["content"])


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
    """

    processor: Any
    max_length: int | None = None
    chat_template: str | None = None
    image_folder: str | None = None
    skip_missing_images: bool = False
    assistant_only: bool = True
    pad_to_multiple_of: int | None = None
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

    # -- one sample ---------------------------------------------------------------------------------

    def _open(self, value, index, kind: str):
        if isinstance(value, (str, os.PathLike)):
            path = resolve_path(os.fspath(value), self.image_folder)
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

    # -- the batch ----------------------------------------------------------------------------------

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows, visual_parts, dropped, skipped = [], [], 0, 0
        for position, example in enumerate(examples):
            index = example.get("sample_index", position)
            images, videos = example_visuals(example)
            messages = example.get("messages", example.get("conversations"))
            chat = to_chat(messages or [], len(images), len(videos), index)
            try:
                images = [self._open(x, index, "image") for x in images]
                videos = [self._open(x, index, "video") for x in videos]
            except FileNotFoundError as err:
                if not self.skip_missing_images:
                    raise
                logger.warning("%s; sample skipped.", err)
                skipped += 1
                continue
            encoded = self._fit(chat, images, videos, index)
            if encoded is None:
                dropped += 1
                continue
            rows.append((encoded["input_ids"][0], self._labels(encoded)))
            if "pixel_values" in encoded:
                visual_parts.append((encoded["pixel_values"], encoded["image_layout"]))
        self.stats[DROPPED_KEY] += dropped
        self.stats[SKIPPED_KEY] += skipped
        if not rows:  # every sample dropped: one padding row that supervises nothing keeps the step valid
            rows = [(torch.tensor([self.pad_token_id]), torch.tensor([IGNORE_INDEX]))]
        batch = self._pad(rows)
        if visual_parts:
            batch["pixel_values"] = torch.cat([p for p, _ in visual_parts])
            batch["image_layout"] = torch.cat([layout for _, layout in visual_parts])
        batch[DROPPED_KEY], batch[SKIPPED_KEY] = dropped, skipped
        return batch

    def _pad(self, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            labels[i, : len(ids)] = lab
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
