"""Modality-length grouping (LLaVA's `group_by_modality_length`): batches of one modality and similar length.

Each sample has a signed length: positive when it holds images or videos, negative for text only. Samples
are shuffled within each modality, cut into mega-batches (one optimizer step's worth across all
processes), each sorted by length, and the mega-batches are shuffled. A batch then mixes neither
modalities (no text-only sample padded to an image sample's length) nor very different lengths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import datasets
import torch
from torch.utils.data import Sampler

from .data import example_visuals, modality_length


def grouped_indices(lengths: Sequence[int], megabatch: int, generator: torch.Generator) -> list[int]:
    groups = [[i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n <= 0]]
    full, partial = [], []
    for group in groups:
        order = [group[j] for j in torch.randperm(len(group), generator=generator).tolist()]
        for start in range(0, len(order), megabatch):
            chunk = sorted(order[start : start + megabatch], key=lambda i: -abs(lengths[i]))
            (full if len(chunk) == megabatch else partial).append(chunk)
    full = [full[j] for j in torch.randperm(len(full), generator=generator).tolist()]
    # The incomplete tail of each modality goes last, so every full mega-batch stays single-modality.
    return [i for chunk in full + partial for i in chunk]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Indices grouped by modality and length; deterministic for a (seed, epoch), so resuming replays it."""

    def __init__(self, lengths: Sequence[int], megabatch: int, seed: int = 0):
        self.lengths = list(lengths)
        self.megabatch = max(1, megabatch)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(grouped_indices(self.lengths, self.megabatch, generator))


def modality_lengths(dataset: datasets.Dataset) -> list[int]:
    """Signed lengths of a map-style dataset: its `modality_length` column, or computed from the text
    (word count) and whether the sample has visuals; images are not decoded."""
    if "modality_length" in dataset.column_names:
        return list(dataset["modality_length"])
    columns = [
        c
        for c in ("messages", "conversations", "images", "image", "videos", "video")
        if c in dataset.column_names
    ]
    view = dataset.select_columns(columns)
    for column, feature in view.features.items():  # read image columns as stored, without decoding
        inner = getattr(feature, "feature", feature)
        if isinstance(inner, datasets.Image):
            image = datasets.Image(decode=False)
            view = view.cast_column(column, datasets.List(image) if inner is not feature else image)
    lengths = []
    for row in view:
        images, videos = example_visuals(row)
        lengths.append(modality_length(row.get("messages", row.get("conversations")), bool(images or videos)))
    return lengths
