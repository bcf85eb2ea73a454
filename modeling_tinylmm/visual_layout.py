"""The model side of the visual layout: arrange each visual input's crop features as its record says."""

from __future__ import annotations

import torch


def arrange(
    crops: torch.Tensor, image_layout: torch.Tensor | None, grid, image_newline, config
) -> list[torch.Tensor]:
    """Per-visual feature sequences from per-crop connector outputs (num_crops, tokens, D)."""
    if image_layout is None:
        return list(crops)
    raise NotImplementedError("layout records are not supported yet")
