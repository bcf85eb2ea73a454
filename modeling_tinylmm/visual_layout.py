"""The model side of the visual layout: arrange each visual input's crop features as its record says.

The processor decides every piece of geometry (crop grid, unpadded window, interpolated size, pooled
frame size, newlines) and writes it into `image_layout`, a LongTensor (num_visual_inputs,
len(LAYOUT_FIELDS)) with one row per image or video, in the order of their placeholders in the batch.
This module only follows the rows; it recomputes nothing.

Kinds (LLaVA-OneVision in AnyRes modes): IMAGE, one crop's tokens (plus one newline when the image is one of
several in an AnyRes-mode sample); ANYRES, the base crop's tokens, then the crop grid as one token map,
unpadded, bilinearly interpolated down, a newline after each row; VIDEO, every frame's token grid pooled
bilinearly, then one newline after all frames (in pad / resize modes the model has no `image_newline`: frames
are pooled the same way, without it).
"""

from __future__ import annotations

import torch
from torch import nn

# Columns of one `image_layout` row. processors/image_processing_tinylmm.py writes the same tuple (the two
# folders ship separately and may not import each other; tests/test_layout.py checks that they agree).
LAYOUT_FIELDS = (
    "kind",  # IMAGE, ANYRES or VIDEO
    "num_crops",  # rows of pixel_values it takes: 1 (IMAGE), 1 base + rows·cols (ANYRES), frames (VIDEO)
    "grid_rows",  # ANYRES: crops per column of the grid (row-major after the base crop); else 1
    "grid_cols",
    "crop_h",  # connector token grid of one crop; 0 × 0 for a connector that keeps no grid
    "crop_w",
    "top",  # ANYRES: the window of the (grid_rows·crop_h, grid_cols·crop_w) token map that holds the
    "left",  # image without its padding
    "height",
    "width",
    "out_h",  # ANYRES: the window's size after bilinear interpolation; VIDEO: the pooled frame size
    "out_w",
    "newline",  # 1: add `image_newline` (IMAGE: after the image, ANYRES: after each row, VIDEO: after all frames)
    "num_tokens",  # placeholder tokens the processor wrote for this input
)
IMAGE, ANYRES, VIDEO = 0, 1, 2
KIND_NAMES = {IMAGE: "image", ANYRES: "anyres", VIDEO: "video"}


def _image(crops: torch.Tensor, r: dict, newline: torch.Tensor | None) -> torch.Tensor:
    feats = crops[0]
    if r["newline"]:
        feats = torch.cat([feats, newline[None].to(feats)])
    return feats


def _anyres(crops: torch.Tensor, r: dict, newline: torch.Tensor | None) -> torch.Tensor:
    base, grid = crops[0], crops[1:]
    rows, cols, h, w = r["grid_rows"], r["grid_cols"], r["crop_h"], r["crop_w"]
    # (rows·cols, h·w, D) -> (D, rows·h, cols·w): crops side by side as in the padded picture
    fmap = grid.view(rows, cols, h, w, -1).permute(4, 0, 2, 1, 3).reshape(-1, rows * h, cols * w)
    fmap = fmap[:, r["top"] : r["top"] + r["height"], r["left"] : r["left"] + r["width"]]
    if (r["out_h"], r["out_w"]) != (r["height"], r["width"]):
        fmap = nn.functional.interpolate(fmap[None], size=(r["out_h"], r["out_w"]), mode="bilinear")[0]
    if r["newline"]:
        column = newline[:, None, None].to(fmap).expand(-1, fmap.shape[1], 1)
        fmap = torch.cat([fmap, column], dim=-1)
    return torch.cat([base, fmap.flatten(1).T])


def _video(frames: torch.Tensor, r: dict, newline: torch.Tensor | None) -> torch.Tensor:
    n, h, w = frames.shape[0], r["crop_h"], r["crop_w"]
    fmap = frames.view(n, h, w, -1).permute(0, 3, 1, 2)
    if (r["out_h"], r["out_w"]) != (h, w):
        fmap = nn.functional.interpolate(fmap, size=(r["out_h"], r["out_w"]), mode="bilinear")
    feats = fmap.flatten(2).transpose(1, 2).reshape(-1, fmap.shape[1])
    if r["newline"]:
        feats = torch.cat([feats, newline[None].to(feats)])
    return feats


_ARRANGE = {IMAGE: _image, ANYRES: _anyres, VIDEO: _video}


def arrange(
    crops: torch.Tensor,
    image_layout: torch.Tensor | None,
    grid: tuple[int, int] | None,
    image_newline: torch.Tensor | None,
    config=None,
) -> list[torch.Tensor]:
    """Per-visual feature sequences (tokens, D) from per-crop connector outputs (num_crops, tokens, D).

    `grid` is the connector's token grid for one crop (None when it keeps no grid); it is only compared
    with the records, never used to derive geometry. Without records every crop is one image.
    """
    if image_layout is None:
        return list(crops)
    records = image_layout.tolist()
    if image_layout.dim() != 2 or any(len(row) != len(LAYOUT_FIELDS) for row in records):
        raise ValueError(
            f"image_layout must be (num_visual_inputs, {len(LAYOUT_FIELDS)}) with columns {LAYOUT_FIELDS}; "
            f"got shape {tuple(image_layout.shape)}."
        )
    needed = sum(row[1] for row in records)
    if needed != crops.shape[0]:
        raise ValueError(
            f"image_layout describes {needed} crops/frames but pixel_values holds {crops.shape[0]}; pass the "
            "pixel_values and image_layout of the same processor call."
        )
    out, start = [], 0
    for i, row in enumerate(records):
        r = dict(zip(LAYOUT_FIELDS, row))
        kind = KIND_NAMES.get(r["kind"])
        if kind is None:
            raise ValueError(f"image_layout row {i} has unknown kind {r['kind']}; known: {KIND_NAMES}.")
        part = crops[start : start + r["num_crops"]]
        start += r["num_crops"]
        if r["crop_h"]:
            if grid is None or tuple(grid) != (r["crop_h"], r["crop_w"]):
                raise ValueError(
                    f"visual input {i} ({kind}) was laid out for a {r['crop_h']}x{r['crop_w']} token grid per "
                    f"crop, but this model's connector gives {grid}; the processor was built for another config."
                )
        elif r["kind"] != IMAGE:
            raise ValueError(
                f"visual input {i} is a {kind} input, which needs a connector that keeps the patch grid."
            )
        elif part.shape[1] != r["num_tokens"]:
            raise ValueError(
                f"visual input {i} expects {r['num_tokens']} tokens per crop but the connector gives "
                f"{part.shape[1]}; the processor was built for another config."
            )
        if r["newline"] and image_newline is None:
            raise ValueError(
                f"visual input {i} ({kind}) asks for image_newline, which this model has only with an anyres "
                "image_aspect_ratio; the processor was built for another config."
            )
        feats = _ARRANGE[r["kind"]](part, r, image_newline)
        if feats.shape[0] != r["num_tokens"]:
            raise ValueError(
                f"visual input {i} ({kind}) gave {feats.shape[0]} features but its record says {r['num_tokens']}."
            )
        out.append(feats)
    return out
