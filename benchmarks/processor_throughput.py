"""Image processor throughput at LLaVA-OneVision geometry (SigLIP 384 px crops, (i·384, j·384) pinpoints,
i, j in 1..6) on 1920x1080 images: tinylmm's TinyLMMImageProcessor against transformers'
LLaVA-OneVision image processor on the same images, in one run.

    python benchmarks/processor_throughput.py [--images 16] [--repeats 3]

`pad`: each image padded to a square and resized to one crop (transformers: the images of a multi-image
sample); `anyres_max_9`: base crop + best-fit grid (3x5 crops at 1920x1080). Prints images per second
(best of the repeats) and the ratio tinylmm / transformers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from transformers import LlavaOnevisionImageProcessorPil

from processors import TinyLMMImageProcessor

SIDE = 384
PINPOINTS = [[i * SIDE, j * SIDE] for i in range(1, 7) for j in range(1, 7)]
MEAN = STD = [0.5, 0.5, 0.5]


def images_per_second(fn, images: list, repeats: int) -> float:
    fn(images[:1])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    reference = LlavaOnevisionImageProcessorPil(
        size={"height": SIDE, "width": SIDE}, image_grid_pinpoints=PINPOINTS, image_mean=MEAN, image_std=STD
    )

    def ours(mode: str):
        ip = TinyLMMImageProcessor(
            size={"height": SIDE, "width": SIDE},
            image_mean=MEAN,
            image_std=STD,
            image_aspect_ratio=mode,
            image_grid_pinpoints=PINPOINTS,
            crop_tokens=[27, 27],
        )
        # a flat list is one image per sample: AnyRes applies in anyres modes
        return lambda batch: ip.preprocess(batch, return_tensors="pt")

    def theirs(mode: str):
        if mode == "pad":  # the images of a multi-image sample are each padded to a square
            return lambda batch: reference.preprocess([batch], return_tensors="pt")
        return lambda batch: reference.preprocess(batch, return_tensors="pt")

    print(f"{args.images} images of {args.width}x{args.height}, best of {args.repeats}; images per second")
    print(f"{'mode':<14}{'tinylmm':>10}{'transformers':>14}{'ratio':>8}")
    for mode in ("pad", "anyres_max_9"):
        a = images_per_second(ours(mode), images, args.repeats)
        b = images_per_second(theirs(mode), images, args.repeats)
        print(f"{mode:<14}{a:>10.1f}{b:>14.1f}{a / b:>8.2f}")
    print(f"transformers: {type(reference).__name__} ({reference.backend} backend)")


if __name__ == "__main__":
    main()
